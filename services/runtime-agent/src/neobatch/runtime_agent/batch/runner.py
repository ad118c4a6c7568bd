"""The runner loop: claim batches (and machines of spread batches) nobody holds and run each
under its lease.

Several agents may share one database: `claim_batch` hands each batch to one of them, the
lease watch renews it, and a batch whose agent died is claimed again once its lease expires
(DESIGN rule 3). A run that crashes is retried with a growing pause, and fails the batch
after `MAX_CRASHES` so a deterministic bug cannot keep a machine billed forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import asyncssh

from neobatch.common.aio import wait_for_event
from neobatch.common.clock import Clock
from neobatch.common.ids import new_id
from neobatch.common.logs import log_fields
from neobatch.runtime_agent.batch.batches import Batch
from neobatch.runtime_agent.batch.lease_watch import BatchWatch
from neobatch.runtime_agent.batch.machine_run import MachineWatch, run_machine
from neobatch.runtime_agent.batch.run import BatchRun, RemoteLost
from neobatch.runtime_agent.batch.spread import SpreadRun
from neobatch.runtime_agent.batch.store import BatchStore
from neobatch.runtime_agent.settings import AgentSettings

log = logging.getLogger("neobatch.runtime_agent.batch.runner")

MAX_CRASHES = 5
MAX_CRASH_PAUSE_SECONDS = 60.0
# How long a batch whose machine is unreachable waits before the next attempt.
REMOTE_LOST_PAUSE_SECONDS = 5.0


def agent_owner_id() -> str:
    """A lease owner id that says which machine holds a batch."""
    return f"{socket.gethostname()}:{new_id('agent')}"


class Runner:
    def __init__(
        self,
        store: BatchStore,
        clock: Clock,
        settings: AgentSettings,
        client_key: asyncssh.SSHKey,
        *,
        owner: str | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._key = client_key
        self.owner = owner or agent_owner_id()
        self._wake = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watches: dict[str, BatchWatch] = {}
        # Machine runs of spread batches, by machine id (as many slots as for batches).
        self._machine_tasks: dict[str, asyncio.Task[None]] = {}
        self._machine_watches: dict[str, MachineWatch] = {}

    def wake(self, batch_id: str | None = None) -> None:
        """A batch arrived, moved or was cancelled: look now instead of at the next poll."""
        self._wake.set()
        if batch_id is not None and (watch := self._watches.get(batch_id)) is not None:
            watch.poke()
        if batch_id is not None:
            # A machine removed or a batch cancelled: its machine runs here look now, so a
            # removed machine stops sending within what it has in flight.
            for machine, machine_watch in list(self._machine_watches.items()):
                if machine.startswith(f"{batch_id}:"):
                    machine_watch.poke()

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._tasks)

    async def run(self) -> None:
        """Forever: fill free slots with claimable batches, then wait for a wake-up or poll."""
        try:
            while True:
                self._wake.clear()
                try:
                    await self._claim_free_slots()
                except Exception:
                    # The database being away is retried at the next poll, not fatal.
                    log.warning("claiming batches failed", exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await wait_for_event(self._wake, self._settings.poll_interval_seconds)
        finally:
            await self._stop_all()

    async def _claim_free_slots(self) -> None:
        await self._claim_batches()
        await self._claim_machines()

    async def _claim_machines(self) -> None:
        while len(self._machine_tasks) < self._settings.max_batches:
            owner = f"{self.owner}/{new_id('run')}"
            machine = await self._store.machines.claim_machine(owner, self._settings.lease_seconds)
            if machine is None:
                return
            if machine.id in self._machine_tasks:
                # Our own earlier run of it lost the lease: claim it again once that one ended.
                await self._store.machines.release_machine(machine.id, owner)
                return
            task = asyncio.create_task(
                run_machine(
                    machine,
                    store=self._store,
                    clock=self._clock,
                    settings=self._settings,
                    client_key=self._key,
                    owner=owner,
                    watches=self._machine_watches,
                ),
                name=f"machine-{machine.id}",
            )
            self._machine_tasks[machine.id] = task
            task.add_done_callback(lambda _t, mid=machine.id: self._machine_done(mid))

    def _machine_done(self, machine_id: str) -> None:
        self._machine_tasks.pop(machine_id, None)
        self._wake.set()

    async def _claim_batches(self) -> None:
        while len(self._tasks) < self._settings.max_batches:
            # One lease owner per run: a run whose lease was revoked (its batch moved to a
            # replacement machine) or expired can never renew it once it is claimed again.
            owner = f"{self.owner}/{new_id('run')}"
            batch = await self._store.claim_batch(owner, self._settings.lease_seconds)
            if batch is None:
                return
            if batch.id in self._tasks:
                # Our own earlier run lost this lease: stop it now rather than at its next
                # renewal, and claim the batch again once it has ended (`_done` wakes us).
                if (watch := self._watches.get(batch.id)) is not None:
                    watch.mark_lost()
                await self._store.release_lease(batch.id, owner)
                return
            task = asyncio.create_task(self._run_one(batch, owner), name=f"batch-{batch.id}")
            self._tasks[batch.id] = task
            task.add_done_callback(lambda _t, bid=batch.id: self._done(bid))

    def _done(self, batch_id: str) -> None:
        self._tasks.pop(batch_id, None)
        self._wake.set()

    async def _stop_all(self) -> None:
        tasks = [*self._tasks.values(), *self._machine_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_one(self, batch: Batch, owner: str) -> None:
        watch = BatchWatch(
            self._store,
            self._clock,
            batch.id,
            owner,
            ttl_seconds=self._settings.lease_seconds,
            expires_at=batch.expires_at,
            cancel_requested=batch.cancel_requested_at is not None,
        )
        run = (SpreadRun if batch.replicas > 1 else BatchRun)(
            batch,
            store=self._store,
            clock=self._clock,
            settings=self._settings,
            client_key=self._key,
            owner=owner,
            watch=watch,
        )
        if isinstance(run, SpreadRun):
            run.machines_ready = self.wake  # type: ignore[method-assign]
        self._watches[batch.id] = watch
        watch_task = asyncio.create_task(watch.run(), name=f"lease-{batch.id}")
        fields = {"batch_id": batch.id, "job_id": batch.job_id}
        try:
            if batch.crash_count >= MAX_CRASHES:
                await run.give_up(f"the batch run failed {batch.crash_count} times")
            else:
                await run.execute()
        except asyncio.CancelledError:
            # Shutting down: hand the batch over now instead of after the lease runs out.
            # The engine keeps running; whoever claims the batch next finds it by its pid file.
            with contextlib.suppress(Exception):
                await self._store.release_lease(batch.id, owner)
            raise
        except RemoteLost as exc:
            log.warning(
                "machine unreachable; will resume", extra=log_fields(**fields, error=str(exc))
            )
            with contextlib.suppress(Exception):
                await self._store.hold_back(batch.id, owner, REMOTE_LOST_PAUSE_SECONDS)
        except Exception as exc:
            pause = min(MAX_CRASH_PAUSE_SECONDS, 5.0 * 2**batch.crash_count)
            log.warning(
                "batch run crashed; will retry",
                exc_info=not isinstance(exc, OSError),
                extra=log_fields(**fields, retry_in_seconds=pause, error=type(exc).__name__),
            )
            with contextlib.suppress(Exception):
                await self._store.record_crash(batch.id, owner, pause)
        finally:
            watch_task.cancel()
            await asyncio.gather(watch_task, return_exceptions=True)
            self._watches.pop(batch.id, None)
