"""The process shell every service shares: connections, relay, background loops, shutdown.

A service's `app.py` builds a `ServiceRuntime`, registers its handlers and loops on it, and
calls `run()`. Nothing here knows any service's rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from faststream.nats import NatsBroker
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.broker import create_broker, ensure_stream
from neobatch.common.clock import Clock, SystemClock
from neobatch.common.deadletter import forward_dead_letters
from neobatch.common.logs import log_fields
from neobatch.common.mongo import create_mongo_client, ensure_indexes
from neobatch.common.outbox import OUTBOX, OUTBOX_INDEXES, OutboxRelay
from neobatch.common.settings import CommonSettings
from neobatch.common.subjects import Namespace

log = logging.getLogger("neobatch.runtime")

Loop = Callable[[], Awaitable[None]]


class ServiceRuntime:
    def __init__(self, service: str, settings: CommonSettings, clock: Clock | None = None) -> None:
        self.service = service
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.ns = Namespace(settings.namespace)
        self.mongo: AsyncMongoClient[dict[str, Any]] = create_mongo_client(settings.mongo_url)
        self.db: AsyncDatabase[dict[str, Any]] = self.mongo.get_database(settings.db_name)
        self.broker: NatsBroker = create_broker(settings.nats_url)
        self.relay: OutboxRelay | None = None
        self._loops: list[tuple[str, Loop]] = []
        self._startup: list[Loop] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._nc: nats.NATS | None = None
        self._stop = asyncio.Event()

    def add_loop(self, name: str, loop: Loop) -> None:
        """A background loop, restarted with a pause if it ever raises."""
        self._loops.append((name, loop))

    def add_startup(self, step: Loop) -> None:
        """A step run once at start, before any handler or loop (indexes, seeding)."""
        self._startup.append(step)

    async def start(self) -> None:
        await ensure_indexes(self.db[OUTBOX], OUTBOX_INDEXES)
        for step in self._startup:
            await step()
        self._nc = await nats.connect(
            self.settings.nats_url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            name=f"{self.service}-relay",
        )
        await ensure_stream(self._nc, self.ns)
        await forward_dead_letters(self._nc, self.ns, self.service)
        self.relay = OutboxRelay(self.db, self._nc, clock=self.clock)
        self.add_loop("outbox-relay", self.relay.run)
        await self.broker.start()
        for name, loop in self._loops:
            self._tasks.append(asyncio.create_task(self._supervise(name, loop), name=name))
        log.info("service started", extra=log_fields(service=self.service))

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
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.broker.stop()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        await self.mongo.close()
        log.info("service stopped", extra=log_fields(service=self.service))

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
