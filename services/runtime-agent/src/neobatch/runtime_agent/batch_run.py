"""One batch, start to end, by the agent holding its lease.

validate → in_progress → SSH, engine, port-forward, health → dispatch what is not finished,
checkpointing each result → (finalizing | cancelling) → files → stop engine → terminal.
A run picked up after another agent died starts again from the batch's stored status and
skips every request already in `batch_results` (DESIGN rule 3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import msgspec

from neobatch.common import filestore
from neobatch.common.batch_input import (
    BatchRequest,
    InputValidator,
    is_blank,
    parse_request,
    strip_bom,
)
from neobatch.common.contracts import BatchStatus, BatchStatusReported, BatchTerminal, Usage
from neobatch.common.errors import NotFound
from neobatch.common.logs import log_fields
from neobatch.common.metrics import DispatchObserver, timed_dispatch
from neobatch.runtime_agent.batches import Batch, Step, path_to, plan_outcome, plan_start
from neobatch.runtime_agent.checkpoints import CheckpointWriter, count_results, finished_indexes
from neobatch.runtime_agent.dispatch import RequestResult, Tally, dispatch_all
from neobatch.runtime_agent.engine import EngineClient, EngineNotReady
from neobatch.runtime_agent.engine_session import EngineSession
from neobatch.runtime_agent.lease_watch import BatchWatch, Interrupted
from neobatch.runtime_agent.output_files import write_result_files
from neobatch.runtime_agent.remote import HostKeyMismatch, HostUnreachable, RemoteError
from neobatch.runtime_agent.settings import AgentSettings
from neobatch.runtime_agent.store import BatchStore

log = logging.getLogger("neobatch.runtime_agent.batch_run")

S = BatchStatus
PROGRESS_INTERVAL_SECONDS = 1.5
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
# Reconnects in a row that let no request finish before the connection dropped again.
RECONNECTS_WITHOUT_PROGRESS = 3
# How long the first answer into an empty checkpoint buffer waits for others to join it.
DISPATCH_CHECKPOINT_LINGER_SECONDS = 0.025


class RemoteLost(Exception):
    """The machine cannot be reached mid-batch: end this attempt, resume it later.

    Not a crash: the planner re-provisions a lost machine and sends the batch its new
    target, and the completion window bounds the wait.
    """


class BatchRun:
    def __init__(
        self,
        batch: Batch,
        *,
        store: BatchStore,
        settings: AgentSettings,
        client_key: asyncssh.SSHKey,
        owner: str,
        watch: BatchWatch,
    ) -> None:
        self.batch = batch
        self.status = batch.status
        self._store = store
        self._settings = settings
        self._key = client_key
        self._owner = owner
        self.watch = watch
        self._session = EngineSession(
            batch,
            store=store,
            settings=settings,
            client_key=client_key,
            owner=owner,
            watch=watch,
        )
        self.tally = Tally(batch.request_counts.total)
        # Validated by an earlier run: the machine was reached before, so failing to reach it
        # now means it was lost, not that the batch cannot start.
        self.resumed = batch.status is S.IN_PROGRESS
        self._ids = {"batch_id": batch.id, "job_id": batch.job_id}
        self.dispatch_seconds = 0.0

    # --- the whole run -----------------------------------------------------------------------

    async def execute(self) -> None:
        step = plan_start(self.batch, self._store.clock.now())
        log.info("batch claimed", extra=log_fields(**self._ids, step=step.value))
        try:
            if step is Step.NOTHING:
                return
            if step is Step.CANCEL_UNSTARTED:
                await self._end(S.CANCELLED)
            elif step is Step.EXPIRE_UNSTARTED:
                message = "the completion window passed before the batch started"
                await self._end(S.EXPIRED, code="batch_expired", message=message)
            elif step is Step.WIND_DOWN:
                await self._load_counts()
                await self._wind_down(
                    plan_outcome(
                        status=self.status, all_finished=True, cancel_requested=False, expired=False
                    )
                )
            else:
                if step is Step.VALIDATE and not await self._validate():
                    return
                await self._run()
        finally:
            await self._session.close()

    async def give_up(self, message: str) -> None:
        """Fail a batch whose runs keep crashing, keeping whatever results it has."""
        try:
            await self._load_counts()
            # Nothing is launched before in_progress, so a validating batch has nothing to stop.
            launched = self.status is not S.VALIDATING
            await self._end(S.FAILED, code="internal_error", message=message, stop_engine=launched)
        finally:
            await self._session.close()

    async def _validate(self) -> bool:
        validator = InputValidator(self.batch.endpoint)
        index = 0
        try:
            async for raw in filestore.iter_lines(self._store.db, self.batch.input_file_id):
                validator.feed(index, raw)
                index += 1
        except NotFound:
            await self._end(
                S.FAILED,
                code="invalid_input_file",
                message=f"input file {self.batch.input_file_id} not found",
            )
            return False
        report = validator.report()
        if not report.ok:
            errors = [{"object": "error", **_plain(e)} for e in report.errors]
            code = "empty_file" if report.invalid_lines == 0 else "invalid_input_file"
            await self._end(S.FAILED, code=code, message=report.summary(), errors=errors)
            return False
        self.tally = Tally(report.total)
        return await self._move(S.IN_PROGRESS)

    async def _run(self) -> None:
        """in_progress: start (or find) the engine and dispatch; then end the batch.

        A connection that drops mid-dispatch is re-established in place: `EngineSession.start`
        reconnects within `ssh_ready_timeout_seconds`, finds the engine still running (no
        relaunch), restores the forward, and dispatch resumes with what has no result. Only a
        machine that stays unreachable past that deadline (or drops again and again without
        any progress) is RemoteLost, for the planner to replace.
        """
        await self._load_counts()
        # Progress heartbeats cover the whole phase (engine start and reconnects included, not
        # only dispatch), and stop before any transition away from in_progress.
        progress = asyncio.create_task(self._report_progress())
        try:
            await self._start_and_dispatch(progress)
        finally:
            await _cancelled(progress)

    async def _start_and_dispatch(self, progress: asyncio.Task[None]) -> None:
        stalled = 0
        while not self.watch.interrupted.is_set() and self.tally.finished < self.tally.total:
            try:
                client = await self._session.start()
            except Interrupted:
                break
            except HostUnreachable as exc:
                if self.resumed:
                    self._session.machine_gone = True
                    raise RemoteLost(exc.message) from exc
                await _cancelled(progress)
                await self._end(S.FAILED, code=exc.code, message=exc.message, stop_engine=False)
                return
            except HostKeyMismatch as exc:
                # Never retried: the machine we pinned is not the one answering.
                await _cancelled(progress)
                await self._end(S.FAILED, code=exc.code, message=exc.message, stop_engine=False)
                return
            except (RemoteError, EngineNotReady) as exc:
                # Stop only what may have been launched: no connection means nothing started.
                launched = self._session.connected
                await _cancelled(progress)
                await self._end(S.FAILED, code=exc.code, message=exc.message, stop_engine=launched)
                return
            before = self.tally.finished
            try:
                await self._dispatch(client)
            finally:
                await client.close()
            if self.watch.lost or not self._session.is_closed:
                break
            await self._load_counts()
            stalled = 0 if self.tally.finished > before else stalled + 1
            if stalled >= RECONNECTS_WITHOUT_PROGRESS:
                break  # RemoteLost below: the connection keeps dying before anything finishes
            # The machine was reached before: failing to reach it again means it was lost.
            self.resumed = True
            log.warning(
                "ssh connection dropped mid-dispatch; reconnecting in place",
                extra=log_fields(**self._ids, finished=self.tally.finished),
            )
        if self.watch.lost:
            log.warning(
                "lease lost; leaving the batch to its new owner", extra=log_fields(**self._ids)
            )
            return
        await self._load_counts()
        ending_anyway = self.watch.cancel_requested or self.watch.expired
        if self._session.is_closed and self.tally.finished < self.tally.total and not ending_anyway:
            raise RemoteLost(f"ssh connection to {self.batch.target.host} dropped")
        outcome = plan_outcome(
            status=self.status,
            all_finished=self.tally.finished >= self.tally.total,
            cancel_requested=self.watch.cancel_requested,
            expired=self.watch.expired,
        )
        await _cancelled(progress)
        await self._wind_down(outcome)

    # --- engine and dispatch -------------------------------------------------------------------

    async def _pending(self, done: set[int]) -> AsyncIterator[BatchRequest]:
        index = -1
        async for raw in filestore.iter_lines(self._store.db, self.batch.input_file_id):
            index += 1
            raw = strip_bom(raw, index)
            if index not in done and not is_blank(raw):
                yield parse_request(raw, index)

    async def _dispatch(self, client: EngineClient) -> None:
        session = self._session
        done = await finished_indexes(self._store.results, self.batch.id)
        started, sent_before = time.monotonic(), self.tally.finished

        async def record(result: RequestResult) -> None:
            if result.status_code is None and session.is_closed:
                return  # The tunnel died, not the request: leave it for the resumed run.
            # The slot frees on the answer; `add` pauses this slot (no new send) while more
            # than `concurrency` answers wait to be stored, so a crash re-sends at most
            # 2 x concurrency requests, none of them recorded (CheckpointWriter).
            await writer.add(result)

        def stored(completed: int, failed: int) -> None:
            # Counted once stored: progress never reports a result a crash could lose.
            self.tally.completed += completed
            self.tally.failed += failed

        observer = DispatchObserver()
        async with CheckpointWriter(
            self._store.results,
            self.batch.id,
            self._store.clock,
            max_pending=client.controller.maximum,
            on_stored=stored,
            # Nothing waits on the linger now (slots free on the answer): a longer one makes
            # fewer, larger writes (the database's cost per document falls up to ~30 a write).
            flush_interval_seconds=DISPATCH_CHECKPOINT_LINGER_SECONDS,
        ) as writer:
            try:
                summary = await dispatch_all(
                    self._pending(done),
                    timed_dispatch(client.send, observer),
                    record,
                    controller=client.controller,
                    should_stop=lambda: self.watch.interrupted.is_set() or session.is_closed,
                )
            except BaseException:
                await writer.abort()
                raise
            finally:
                observer.flush()
        elapsed = time.monotonic() - started
        self.dispatch_seconds += elapsed
        finished = self.tally.finished - sent_before
        log.info(
            "dispatch ended",
            extra=log_fields(
                **self._ids,
                sent=summary.sent,
                stopped=summary.stopped,
                seconds=round(elapsed, 3),
                requests_per_second=round(finished / elapsed, 1) if elapsed > 0 else None,
                concurrency_limit=client.controller.limit,
                checkpoint_writes=writer.writes,
                # Times dispatch paused because `concurrency` answers waited to be stored.
                checkpoint_pauses=writer.paused,
            ),
        )

    async def _report_progress(self) -> None:
        """`request_counts` and a `batch.status` event every PROGRESS_INTERVAL_SECONDS.

        Also when the counts did not move: a batch whose requests are all slow (long
        generations, retries waiting out a 429) still shows it is alive, and `updated_at`
        keeps moving. One small write per batch per interval.
        """
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_SECONDS)
            counts = self.tally.counts()
            event = self._status_event(S.IN_PROGRESS)
            try:
                won = await self._store.save_progress(
                    self.batch.id, self._owner, S.IN_PROGRESS, {"request_counts": counts}, [event]
                )
            except Exception:
                # Progress is advisory; the lease watch decides whether the database is gone.
                log.warning("progress report failed", exc_info=True, extra=log_fields(**self._ids))
                continue
            if not won:
                self.watch.mark_lost()
                return

    # --- ending --------------------------------------------------------------------------------

    async def _wind_down(self, outcome: BatchStatus) -> None:
        """Pass through finalizing/cancelling, write the files, stop the engine, end."""
        for status in path_to(self.status, outcome)[:-1]:
            if not await self._move(status):
                return
        if outcome is S.EXPIRED:
            await self._expire_unfinished()
        code = "batch_expired" if outcome is S.EXPIRED else ""
        message = "the completion window passed before every request finished" if code else ""
        await self._end(outcome, code=code, message=message, stop_engine=True)

    async def _expire_unfinished(self) -> None:
        """OpenAI writes every request the window cut off to the error file as `batch_expired`."""
        done = await finished_indexes(self._store.results, self.batch.id)
        async with CheckpointWriter(
            self._store.results, self.batch.id, self._store.clock
        ) as writer:
            async for request in self._pending(done):
                await writer.add(
                    RequestResult(
                        line_index=request.line_index,
                        custom_id=request.custom_id,
                        error_code="batch_expired",
                        error_message=EXPIRED_MESSAGE,
                    )
                )
        await self._load_counts()

    async def _end(
        self,
        outcome: BatchStatus,
        *,
        code: str = "",
        message: str = "",
        errors: list[dict[str, Any]] | None = None,
        stop_engine: bool = False,
    ) -> None:
        fields: dict[str, Any] = {"request_counts": self.tally.counts()}
        output_id = error_id = None
        usage = Usage()
        if self.tally.finished:
            output_id, error_id, usage = await write_result_files(
                self._store.db,
                self._store.results,
                self.batch.id,
                owner=self.batch.owner,
                completed=self.tally.completed,
                failed=self.tally.failed,
            )
        if stop_engine:
            await self._session.stop()
        fields.update(
            output_file_id=output_id, error_file_id=error_id, usage=msgspec.to_builtins(usage)
        )
        if code:
            fields.update(error_code=code, error_message=message)
        if errors is not None:
            fields["errors"] = errors
        event = BatchTerminal(
            batch_id=self.batch.id,
            job_id=self.batch.job_id,
            status=outcome,
            request_counts=self.tally.counts(),
            output_file_id=output_id,
            error_file_id=error_id,
            error_code=code,
            error_message=message,
            usage=usage,
        )
        if await self._move(outcome, fields=fields, event=event):
            log.info(
                "batch ended",
                extra=log_fields(**self._ids, status=outcome.value, error_code=code),
            )

    async def _move(
        self,
        new: BatchStatus,
        *,
        fields: dict[str, Any] | None = None,
        event: BatchTerminal | None = None,
    ) -> bool:
        fields = {"request_counts": self.tally.counts(), **(fields or {})}
        won = await self._store.save_transition(
            self.batch.id,
            self._owner,
            self.status,
            new,
            fields=fields,
            events=[event or self._status_event(new)],
        )
        if won:
            self.status = new
        else:
            self.watch.mark_lost()
        return won

    def _status_event(self, status: BatchStatus) -> BatchStatusReported:
        return BatchStatusReported(
            batch_id=self.batch.id,
            job_id=self.batch.job_id,
            status=status,
            request_counts=self.tally.counts(),
        )

    async def _load_counts(self) -> None:
        completed, failed = await count_results(self._store.results, self.batch.id)
        self.tally = Tally(self.tally.total, completed, failed)


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has stopped (idempotent)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _plain(struct: Any) -> dict[str, Any]:
    return {f: getattr(struct, f) for f in struct.__struct_fields__}
