"""The process shell every service shares: connections, relay, background loops, shutdown.

A service's `app.py` builds a `ServiceRuntime`, registers its handlers and loops on it, and
calls `run()`. Nothing here knows any service's rules.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from faststream.nats import NatsBroker
from prometheus_client import CollectorRegistry, generate_latest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.broker import create_broker, ensure_stream
from neobatch.common.clock import Clock, SystemClock
from neobatch.common.deadletter import forward_dead_letters
from neobatch.common.health import HealthServer
from neobatch.common.logs import log_fields
from neobatch.common.metrics import new_registry
from neobatch.common.mongo import create_mongo_client, ensure_indexes
from neobatch.common.outbox import OUTBOX, OUTBOX_INDEXES, OutboxRelay
from neobatch.common.settings import CommonSettings, nats_servers
from neobatch.common.startup import retry_step
from neobatch.common.state_metrics import StateCollector
from neobatch.common.subjects import Namespace

log = logging.getLogger("neobatch.runtime")

# Longest any single shutdown step may take.
STOP_STEP_SECONDS = 5.0

Loop = Callable[[], Awaitable[None]]


class ServiceRuntime:
    def __init__(
        self,
        service: str,
        settings: CommonSettings,
        clock: Clock | None = None,
        *,
        health_server: bool = True,
    ) -> None:
        """`health_server=False`: the service serves /healthz, /readyz, /metrics itself (console)."""
        self.service = service
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.ns = Namespace(settings.namespace)
        self.mongo: AsyncMongoClient[dict[str, Any]] = create_mongo_client(settings.mongo_url)
        self.db: AsyncDatabase[dict[str, Any]] = self.mongo.get_database(settings.db_name)
        self.broker: NatsBroker = create_broker(nats_servers(settings.nats_url))
        self.relay: OutboxRelay | None = None
        self._loops: list[tuple[str, Loop]] = []
        self._startup: list[Loop] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._nc: nats.NATS | None = None
        self._stop = asyncio.Event()
        self._started = False
        # Prometheus registry of this runtime: process counters and cluster-state gauges; a
        # service may register collectors of its own (`runtime.metrics.register(...)`).
        self.metrics: CollectorRegistry = new_registry()
        self._state = StateCollector(
            self.db,
            lambda: self._nc,
            self.ns,
            self.clock,
            cache_seconds=settings.metrics_cache_seconds,
        )
        self.metrics.register(self._state)
        self._health: HealthServer | None = None
        if health_server and settings.health_port:
            self._health = HealthServer(
                settings.health_host, settings.health_port, self.readiness, self.render_metrics
            )

    def add_loop(self, name: str, loop: Loop) -> None:
        """A background loop, restarted with a pause if it ever raises."""
        self._loops.append((name, loop))

    def add_startup(self, step: Loop) -> None:
        """A step run once at start, before any handler or loop (indexes, seeding)."""
        self._startup.append(step)

    async def start(self) -> None:
        """Connect, prepare and start consuming; each step retried while a dependency restarts."""
        if self._health is not None:
            # First, so liveness answers (and readiness says why not) while connecting.
            await self._health.start()
        deadline = time.monotonic() + self.settings.startup_seconds

        async def step(name: str, work: Loop, undo: Loop | None = None) -> None:
            await retry_step(self.service, name, work, deadline=deadline, undo=undo)

        await step("outbox indexes", self._ensure_outbox_indexes)
        for number, startup in enumerate(self._startup, 1):
            await step(f"start-up step {number}", startup)
        await step("nats connect", self._connect_nats)
        await step("event stream", self._ensure_stream)
        await step("dead-letter forwarder", self._forward_dead_letters)
        assert self._nc is not None
        self.relay = OutboxRelay(self.db, self._nc, clock=self.clock)
        self.add_loop("outbox-relay", self.relay.run)
        # A half-started broker (connected, some consumers bound) is stopped before the next
        # attempt, so no consumer is bound twice.
        await step("consumers", self.broker.start, undo=self.broker.stop)
        for name, loop in self._loops:
            self._tasks.append(asyncio.create_task(self._supervise(name, loop), name=name))
        self._started = True
        log.info("service started", extra=log_fields(service=self.service))

    async def _ensure_outbox_indexes(self) -> None:
        await ensure_indexes(self.db[OUTBOX], OUTBOX_INDEXES)

    async def _connect_nats(self) -> None:
        if self._nc is not None and self._nc.is_connected:
            return
        self._nc = await nats.connect(
            nats_servers(self.settings.nats_url),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            name=f"{self.service}-relay",
        )

    async def _ensure_stream(self) -> None:
        assert self._nc is not None
        await ensure_stream(self._nc, self.ns, self.settings.stream_replicas)

    async def _forward_dead_letters(self) -> None:
        assert self._nc is not None
        await forward_dead_letters(self._nc, self.ns, self.service, self.settings.stream_replicas)

    async def readiness(self) -> dict[str, bool]:
        """What /readyz reports: every value must be True for the service to take work."""
        return {
            "started": self._started,
            "nats": self._nats_connected(),
            "mongo": await self._mongo_ok(),
            "consumers": self._started and self._consumers_bound(),
        }

    def _nats_connected(self) -> bool:
        if self._nc is None or not self._nc.is_connected:
            return False
        try:
            return bool(self.broker.connection.is_connected)
        except Exception:
            return False

    async def _mongo_ok(self) -> bool:
        try:
            await asyncio.wait_for(self.db.command("ping"), timeout=2.0)
        except Exception:
            return False
        return True

    def _consumers_bound(self) -> bool:
        return all(
            sub.running and getattr(sub, "subscription", True) is not None
            for sub in self.broker.subscribers
        )

    async def render_metrics(self) -> bytes:
        """The Prometheus text exposition of this runtime's registry (state read if stale)."""
        await self._state.refresh()
        return generate_latest(self.metrics)

    def notify_outbox(self) -> None:
        if self.relay is not None:
            self.relay.notify()

    async def _supervise(self, name: str, loop: Loop) -> None:
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background loop crashed; restarting", extra=log_fields(loop=name))
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Stop everything, each step bounded: a shutdown must never hang (DESIGN rule 4)."""
        self._started = False
        await self._cancel_loops()
        await self._bounded("broker", self.broker.stop())
        if self._nc is not None:
            await self._bounded("nats", self._nc.close())
        await self._bounded("mongo", self.mongo.close())
        if self._health is not None:
            await self._bounded("health server", self._health.stop())
        log.info("service stopped", extra=log_fields(service=self.service))

    async def _cancel_loops(self) -> None:
        # Cancelled twice if need be: on Python 3.11 `asyncio.wait_for` can swallow a
        # cancellation that lands as its inner wait completes, leaving a loop running.
        pending = {task for task in self._tasks if not task.done()}
        for _ in range(2):
            if not pending:
                return
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=STOP_STEP_SECONDS)
        if pending:
            log.warning(
                "background loops did not stop",
                extra=log_fields(loops=[t.get_name() for t in pending]),
            )

    async def _bounded(self, what: str, step: Awaitable[object]) -> None:
        try:
            await asyncio.wait_for(step, STOP_STEP_SECONDS)
        except Exception:
            log.warning(
                "shutdown step failed or timed out", exc_info=True, extra=log_fields(step=what)
            )

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Start, then serve until SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.stop()
