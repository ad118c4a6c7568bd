"""One machine of a spread batch (issue 15), run by the agent holding that machine's lease.

SSH, engine, port-forward, health (`EngineSession`, as for a batch on one machine, in the
machine's own work directory) → send the requests of the chunks it claims or steals
(`ChunkFeed`), each result stored only under a live claim (`MachineStore.store_fenced`) →
when nothing is left to run or steal: `batch.machine_done` at once, then the engine stopped
and the work directory removed. The batch's validation, status and files are its batch run's
(`spread.SpreadRun`); a machine run never moves the batch.

Stops at once when the machine is removed (the planner lost or released it: its chunks are
already free), when the batch ends, is cancelled or expires (`batch.machine_done`,
`batch_ended`), or when its lease is lost (another agent took the machine over: it takes the
chunks back and re-runs what has no result).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import asyncssh
import msgspec

from neobatch.common.clock import Clock
from neobatch.common.logs import log_fields
from neobatch.common.metrics import DispatchObserver, timed_dispatch
from neobatch.runtime_agent.batch.batches import Batch
from neobatch.runtime_agent.batch.chunk_store import Fenced
from neobatch.runtime_agent.batch.chunks import slice_lines
from neobatch.runtime_agent.batch.feed import ChunkFeed
from neobatch.runtime_agent.batch.lease_watch import BatchWatch, Interrupted
from neobatch.runtime_agent.batch.machines import (
    BATCH_ENDED,
    DONE,
    ENGINE_FAILED,
    MACHINE_UNREACHABLE,
    NO_WORK_LEFT,
    READY,
    Machine,
)
from neobatch.runtime_agent.batch.store import BatchStore
from neobatch.runtime_agent.dispatch.pool import after_grace, dispatch_all
from neobatch.runtime_agent.dispatch.tally import RequestResult
from neobatch.runtime_agent.engine.client import EngineClient, EngineNotReady
from neobatch.runtime_agent.machine.errors import HostKeyMismatch, HostUnreachable, RemoteError
from neobatch.runtime_agent.machine.session import EngineSession
from neobatch.runtime_agent.results.pages import LINE_BYTES, build_pages
from neobatch.runtime_agent.results.writer import pending_limit
from neobatch.runtime_agent.settings import AgentSettings

log = logging.getLogger("neobatch.runtime_agent.batch.machine_run")

# Passes in a row cut short by a dropped connection or an exited engine before the machine
# is given up as unreachable (the planner replaces it; its chunks go to the others).
MAX_BROKEN_PASSES = 3
CHECKPOINT_LINGER_SECONDS = 0.025
MAX_CRASH_PAUSE_SECONDS = 30.0


class MachineWatch(BatchWatch):
    """The machine's lease, and whether its run must stop: the machine was removed or ended,
    or its batch was cancelled, expired or ended."""

    def __init__(
        self,
        store: BatchStore,
        clock: Clock,
        machine: Machine,
        batch: Batch,
        owner: str,
        ttl: float,
    ) -> None:
        super().__init__(
            store,
            clock,
            batch.id,
            owner,
            ttl_seconds=ttl,
            expires_at=batch.expires_at,
            cancel_requested=batch.cancel_requested_at is not None,
        )
        self._machine_id = machine.id
        self.machine_status = READY

    async def _renew(self) -> bool:
        return await self._store.machines.renew_machine(self._machine_id, self._owner, self._ttl)

    async def _check(self) -> None:
        machine = await self._store.machines.find_machine(self._machine_id)
        self.machine_status = machine.status if machine is not None else DONE
        if self.machine_status != READY:
            self.interrupted.set()
        batch = await self._store.find_batch(self._batch_id)
        if batch is None or batch.status.is_terminal or batch.cancel_requested_at is not None:
            self.cancel_requested = True


class MachineRun:
    def __init__(
        self,
        machine: Machine,
        batch: Batch,
        *,
        store: BatchStore,
        clock: Clock,
        settings: AgentSettings,
        client_key: asyncssh.SSHKey,
        owner: str,
        watch: MachineWatch,
    ) -> None:
        self.machine = machine
        self._store = store
        self._machines = store.machines
        self._clock = clock
        self._owner = owner
        self.watch = watch
        # The batch as seen from this machine: its target, launch and pinned key.
        self.view = msgspec.structs.replace(
            batch,
            provision_id=machine.provision_id,
            target=machine.target,
            runtime=machine.runtime,
            engine=machine.engine,
            host_public_key=machine.host_public_key,
        )
        self._session = EngineSession(
            self.view,
            store=store,
            settings=settings,
            client_key=client_key,
            owner=owner,
            watch=watch,
            launch_key=machine.launch_key,
            pin_key=functools.partial(self._machines.pin_machine_key, machine.id),
            still_wanted=self._still_wanted,
        )
        self._ids = {"batch_id": batch.id, "provision_id": machine.provision_id}
        self._started = False

    async def _still_wanted(self) -> bool:
        machine = await self._machines.find_machine(self.machine.id)
        return machine is not None and machine.status == READY

    async def execute(self) -> None:
        log.info("machine claimed", extra=log_fields(**self._ids))
        try:
            await self._run()
        finally:
            await self._session.close()

    async def _run(self) -> None:
        token = self._owner
        await self._machines.take_back(self.machine.id, token)
        broken = 0
        while not self.watch.interrupted.is_set():
            client = await self._start_engine()
            if client is None:
                break
            if not self._started:
                self._started = True
                await self._machines.note_machine(
                    self.machine.id, self._owner, {"dispatch_started_at": self._clock.now()}
                )
            feed = ChunkFeed(
                self._store,
                self.view.id,
                self.view.input_file_id,
                self.machine.id,
                token,
                lambda c=client: slice_lines(c.controller.limit),
            )
            try:
                await self._dispatch(client, feed)
            finally:
                await client.close()
            session = self._session
            dropped = session.is_closed or session.engine_exited
            await self._machines.note_machine(
                self.machine.id, self._owner, {"dispatch_ended_at": self._clock.now()}
            )
            if feed.exhausted and not dropped and not self.watch.interrupted.is_set():
                # No chunk left: the work is done, or the batch is ending (its chunks closed).
                await self._finish(BATCH_ENDED if await self._batch_ending() else NO_WORK_LEFT)
                return
            if not dropped:
                break
            broken += 1
            if session.engine_exited:
                await session.exit_reason()
            if broken >= MAX_BROKEN_PASSES:
                await self._finish(MACHINE_UNREACHABLE, stop=False)
                return
            await self._machines.take_back(self.machine.id, token)
        await self._interrupted()

    async def _batch_ending(self) -> bool:
        batch = await self._store.find_batch(self.view.id)
        return batch is None or batch.status.is_terminal or batch.cancel_requested_at is not None

    async def _start_engine(self) -> EngineClient | None:
        try:
            return await self._session.start()
        except Interrupted:
            return None
        except HostUnreachable as exc:
            self._session.machine_gone = True
            await self._finish(MACHINE_UNREACHABLE, stop=False, error=(exc.code, exc.message))
        except (HostKeyMismatch, RemoteError, EngineNotReady) as exc:
            stop = self._session.connected and not isinstance(exc, HostKeyMismatch)
            await self._finish(ENGINE_FAILED, stop=stop, error=(exc.code, exc.message))
        return None

    async def _dispatch(self, client: EngineClient, feed: ChunkFeed) -> None:
        session = self._session

        def tunnel_down() -> bool:
            return session.is_closed or session.engine_exited

        async def record(result: RequestResult) -> None:
            if result.status_code is None and tunnel_down():
                return  # the tunnel died, not the request: the next pass sends it again
            await writer.add(result)

        async def insert(results: list[RequestResult], pages: list[dict]) -> list[dict]:
            while True:
                # Only lines of chunks still ours (another write may have lost one meanwhile).
                ours = [r for r in results if r.line_index in feed.line_chunk]
                if not ours:
                    return []
                if len(ours) != len(results):
                    results, pages = ours, build_pages(self.view.id, ours, self._clock.now())
                lines = [r.line_index for r in results]
                failed = sum(len(p["failed"]) for p in pages) // LINE_BYTES
                try:
                    await self._store.store_fenced(
                        self.machine.id,
                        self._owner,
                        feed.chunks_of(lines),
                        pages,
                        len(results) - failed,
                        failed,
                    )
                except Fenced as lost:
                    if lost.chunk_id is None:
                        self.watch.mark_lost()  # the machine is no longer ours
                        return []
                    feed.forget(lost.chunk_id)
                    continue
                await feed.stored(lines)
                return pages

        ids = self._ids
        observer = DispatchObserver()
        async with client.watching_load(ids):
            writer = self._store.checkpoint_writer(
                self.view.id,
                max_pending=pending_limit(client.controller.maximum),
                flush_interval_seconds=CHECKPOINT_LINGER_SECONDS,
                insert=insert,
            )
            async with writer:
                try:
                    summary = await dispatch_all(
                        feed.requests(),
                        timed_dispatch(client.send, observer),
                        record,
                        controller=client.controller,
                        should_stop=lambda: self.watch.interrupted.is_set() or tunnel_down(),
                        abandon_in_flight=lambda: after_grace(
                            self.watch.interrupted, client.cancel_grace_seconds
                        ),
                    )
                except BaseException:
                    await writer.abort()
                    raise
                finally:
                    observer.flush()
        log.info(
            "machine dispatch ended",
            extra=log_fields(
                **ids,
                sent=summary.sent,
                abandoned=summary.abandoned,
                exhausted=feed.exhausted,
                chunks_claimed=feed.chunks_claimed,
                chunks_stolen=feed.chunks_stolen,
                checkpoint_writes=writer.writes,
            ),
        )

    async def _finish(
        self, reason: str, *, stop: bool = True, error: tuple[str, str] | None = None
    ) -> None:
        """`batch.machine_done` at once (its chunks freed with it), then the engine stopped
        and the work directory removed."""
        fields = {"dispatch_ended_at": self._clock.now()} if self._started else {}
        if error is not None:
            fields.update(error_code=error[0], error_message=error[1])
        ended = await self._machines.end_machine(
            self.machine.id, reason, owner=self._owner, fields=fields
        )
        log.info("machine done", extra=log_fields(**self._ids, reason=reason, sent_event=ended))
        if stop and self._session.connected:
            await self._session.stop()

    async def _interrupted(self) -> None:
        """Stopped from outside: leave a taken-over machine to its new run, nothing to do for
        a removed one; a batch that ended or stops ends this machine too."""
        machine = await self._machines.find_machine(self.machine.id)
        status = machine.status if machine is not None else DONE
        if status == READY and self.watch.lost:
            return  # another run holds the machine now: the engine is its
        if status == DONE or self.watch.cancel_requested or self.watch.expired:
            await self._machines.end_machine(self.machine.id, BATCH_ENDED, owner=self._owner)
            if self._session.connected:
                await self._session.stop()


async def run_machine(
    machine: Machine,
    *,
    store: BatchStore,
    clock: Clock,
    settings: AgentSettings,
    client_key: asyncssh.SSHKey,
    owner: str,
    watches: dict[str, MachineWatch] | None = None,
) -> None:
    """Run one claimed machine under its lease (the runner's task for it). `watches` is the
    runner's registry: a removal or cancel that reaches this agent pokes the watch at once
    instead of waiting for its next tick."""
    fields = {"batch_id": machine.batch_id, "provision_id": machine.provision_id}
    batch = await store.find_batch(machine.batch_id)
    if batch is None or batch.status.is_terminal:
        await store.machines.end_machine(machine.id, BATCH_ENDED, owner=owner)
        return
    watch = MachineWatch(store, clock, machine, batch, owner, settings.lease_seconds)
    run = MachineRun(
        machine,
        batch,
        store=store,
        clock=clock,
        settings=settings,
        client_key=client_key,
        owner=owner,
        watch=watch,
    )
    watch_task = asyncio.create_task(watch.run(), name=f"lease-{machine.id}")
    if watches is not None:
        watches[machine.id] = watch
    try:
        await run.execute()
    except asyncio.CancelledError:
        # Shutting down: hand the machine over now; its engine keeps running for the next run.
        with contextlib.suppress(Exception):
            await store.machines.release_machine(machine.id, owner)
        raise
    except Exception as exc:
        log.warning(
            "machine run crashed; will retry",
            exc_info=not isinstance(exc, OSError),
            extra=log_fields(**fields, error=type(exc).__name__),
        )
        with contextlib.suppress(Exception):
            await store.machines.hold_back(machine.id, owner, MAX_CRASH_PAUSE_SECONDS / 6)
    finally:
        if watches is not None and watches.get(machine.id) is watch:
            del watches[machine.id]
        watch_task.cancel()
        await asyncio.gather(watch_task, return_exceptions=True)
