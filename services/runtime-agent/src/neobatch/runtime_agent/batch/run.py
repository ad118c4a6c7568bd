"""One batch, start to end, by the agent holding its lease.

validate → in_progress → SSH, engine, port-forward, health → dispatch what is not finished,
checkpointing each result → (finalizing | cancelling) → files → stop engine → terminal.
A run picked up after another agent died starts again from the batch's stored status and
skips every request already in `batch_results` (DESIGN rule 3).

Decide, then apply: what to do first and how the batch ends are the pure functions of
`batches` (`plan_start`, `plan_outcome`, `path_to`, `decide_move`, `decide_end`); this module
does the I/O around them, and writes each status change with one store call.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import asyncssh

from neobatch.common.aio import pause
from neobatch.common.batch_input import InputValidator
from neobatch.common.clock import Clock
from neobatch.common.contracts import BatchStatus
from neobatch.common.errors import NotFound
from neobatch.common.logs import log_fields
from neobatch.runtime_agent.batch.batches import (
    BUDGET_EXCEEDED,
    BUDGET_LINE_MESSAGE,
    BUDGET_REASON,
    EXPIRED_BEFORE_START,
    EXPIRED_MESSAGE,
    EXPIRED_UNFINISHED,
    NO_FILES,
    Batch,
    Failure,
    Step,
    Transition,
    decide_end,
    decide_move,
    engine_exited_failure,
    input_failure,
    path_to,
    plan_outcome,
    plan_start,
    status_reported,
)
from neobatch.runtime_agent.batch.dispatch_pass import dispatch_pass, pending_requests
from neobatch.runtime_agent.batch.lease_watch import BatchWatch, Interrupted
from neobatch.runtime_agent.batch.store import BatchStore
from neobatch.runtime_agent.dispatch.tally import RequestResult, Tally
from neobatch.runtime_agent.engine.client import EngineClient, EngineNotReady
from neobatch.runtime_agent.machine.errors import HostKeyMismatch, HostUnreachable, RemoteError
from neobatch.runtime_agent.machine.session import EngineSession
from neobatch.runtime_agent.settings import AgentSettings

log = logging.getLogger("neobatch.runtime_agent.batch.run")

S = BatchStatus
PROGRESS_INTERVAL_SECONDS = 1.5
# Reconnects in a row that let no request finish before the connection dropped again.
RECONNECTS_WITHOUT_PROGRESS = 3
# An engine that exited mid-batch is relaunched; the batch fails `engine_exited` once it exited
# this many times in a row with no request finished in between, or this many times in all.
ENGINE_EXITS_WITHOUT_PROGRESS = 2
ENGINE_EXITS = 3


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
        clock: Clock,
        settings: AgentSettings,
        client_key: asyncssh.SSHKey,
        owner: str,
        watch: BatchWatch,
    ) -> None:
        self.batch = batch
        self.status = batch.status
        self._store = store
        self._clock = clock
        self._owner = owner
        self._max_line_bytes = settings.common.max_input_line_bytes
        self._max_requests = settings.common.max_batch_requests
        self._max_input_bytes = settings.common.max_batch_input_bytes
        self._prefix_order = settings.prefix_order
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
        # This run's first dispatch pass began / its last one ended (wall clock).
        self.dispatch_started_at: datetime | None = None
        self.dispatch_ended_at: datetime | None = None

    async def execute(self) -> None:
        step = plan_start(self.batch, self._clock.now())
        log.info("batch claimed", extra=log_fields(**self._ids, step=step.value))
        try:
            if step is Step.NOTHING:
                return
            if step is Step.CANCEL_UNSTARTED:
                await self._end(S.CANCELLED)
            elif step is Step.EXPIRE_UNSTARTED:
                await self._end(S.EXPIRED, EXPIRED_BEFORE_START)
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
            await self._end(S.FAILED, Failure("internal_error", message), stop_engine=launched)
        finally:
            await self._session.close()

    async def _validate(self) -> bool:
        validator = InputValidator(
            self.batch.endpoint,
            max_line_bytes=self._max_line_bytes,
            max_requests=self._max_requests,
            max_bytes=self._max_input_bytes,
        )
        index = 0
        try:
            lines = self._store.input_lines(self.batch.input_file_id, self._max_line_bytes)
            async for raw in lines:
                validator.feed(index, raw)
                index += 1
        except NotFound:
            missing = f"input file {self.batch.input_file_id} not found"
            await self._end(S.FAILED, Failure("invalid_input_file", missing))
            return False
        report = validator.report()
        failure = input_failure(report)
        if failure is not None:
            await self._end(S.FAILED, failure)
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
        session = self._session
        stalled = exits = exits_stalled = 0
        engine_failure: Failure | None = None
        while not self.watch.interrupted.is_set() and self.tally.finished < self.tally.total:
            client = await self._start_engine(progress)
            if client is None:
                break
            before = self.tally.finished
            # The bill's idle time: the engine is up from here until the last answer is stored.
            self.dispatch_started_at = self.dispatch_started_at or self._clock.now()
            try:
                self.dispatch_seconds += await dispatch_pass(
                    self._store,
                    self.batch,
                    client,
                    self.tally,
                    interrupted=self.watch.interrupted,
                    # A dead tunnel or engine: stop sending, leave what failed with it unrecorded.
                    tunnel_down=lambda: session.is_closed or session.engine_exited,
                    prefix_order=self._prefix_order,
                )
                self.dispatch_ended_at = self._clock.now()
            finally:
                await client.close()
            if self.watch.lost or not (session.is_closed or session.engine_exited):
                break
            await self._load_counts()
            progressed = self.tally.finished > before
            if session.engine_exited:
                # Read its reason before the relaunch overwrites its log.
                reason = await session.exit_reason()
                exits += 1
                exits_stalled = 0 if progressed else exits_stalled + 1
                if exits >= ENGINE_EXITS or exits_stalled >= ENGINE_EXITS_WITHOUT_PROGRESS:
                    engine_failure = engine_exited_failure(reason, exits)
                    break
                continue
            stalled = 0 if progressed else stalled + 1
            if stalled >= RECONNECTS_WITHOUT_PROGRESS:
                break  # RemoteLost below: the connection keeps dying before anything finishes
            # The machine was reached before: failing to reach it again means it was lost.
            self.resumed = True
            log.warning(
                "ssh connection dropped mid-dispatch; reconnecting in place",
                extra=log_fields(**self._ids, finished=self.tally.finished),
            )
        if self.status.is_terminal:
            return  # starting the engine failed the batch
        if self.watch.lost:
            await self._lease_lost()
            return
        await self._load_counts()
        ending_anyway = self.watch.cancel_requested or self.watch.expired
        if engine_failure is not None and not ending_anyway:
            await _cancelled(progress)
            await self._fail_unfinished(engine_failure)
            await self._end(S.FAILED, engine_failure, stop_engine=True)
            return
        if session.is_closed and self.tally.finished < self.tally.total and not ending_anyway:
            raise RemoteLost(f"ssh connection to {self.batch.target.host} dropped")
        budget_stop = self.watch.cancel_requested and (
            await self._store.find_cancel_reason(self.batch.id) == BUDGET_REASON
        )
        outcome = plan_outcome(
            status=self.status,
            all_finished=self.tally.finished >= self.tally.total,
            cancel_requested=self.watch.cancel_requested,
            expired=self.watch.expired,
            budget_stop=budget_stop,
        )
        await _cancelled(progress)
        await self._wind_down(outcome)

    async def _start_engine(self, progress: asyncio.Task[None]) -> EngineClient | None:
        """The engine, ready to take requests; None when interrupted or when starting it failed
        the batch (then it has ended)."""
        session = self._session
        try:
            return await session.start()
        except Interrupted:
            return None
        except HostUnreachable as exc:
            if self.resumed:
                session.machine_gone = True
                raise RemoteLost(exc.message) from exc
            failure, launched = Failure(exc.code, exc.message), False
        except HostKeyMismatch as exc:
            # Never retried: the machine we pinned is not the one answering.
            failure, launched = Failure(exc.code, exc.message), False
        except (RemoteError, EngineNotReady) as exc:
            # Stop only what may have been launched: no connection means nothing started.
            failure, launched = Failure(exc.code, exc.message), session.connected
        await _cancelled(progress)
        await self._end(S.FAILED, failure, stop_engine=launched)
        return None

    async def _report_progress(self) -> None:
        """`request_counts` and a `batch.status` event every PROGRESS_INTERVAL_SECONDS.

        Also when the counts did not move: a batch whose requests are all slow (long
        generations, retries waiting out a 429) still shows it is alive, and `updated_at`
        keeps moving. One small write per batch per interval.
        """
        while True:
            await pause(PROGRESS_INTERVAL_SECONDS)
            counts = self.tally.counts()
            event = status_reported(self.batch, S.IN_PROGRESS, counts)
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

    async def _wind_down(self, outcome: BatchStatus) -> None:
        """Pass through finalizing/cancelling, write the files, stop the engine, end."""
        for status in path_to(self.status, outcome)[:-1]:
            if not await self._move(status):
                await self._lease_lost()
                return
        failure = None
        if outcome is S.EXPIRED:
            await self._fail_unfinished(Failure("batch_expired", EXPIRED_MESSAGE))
            failure = EXPIRED_UNFINISHED
        elif outcome is S.FAILED:  # only a stop at the job's cost cap ends a wind-down failed
            await self._fail_unfinished(Failure(BUDGET_REASON, BUDGET_LINE_MESSAGE))
            failure = BUDGET_EXCEEDED
        await self._end(outcome, failure, stop_engine=True)

    async def _lease_lost(self) -> None:
        log.warning("lease lost; leaving the batch to its new owner", extra=log_fields(**self._ids))
        # The engine and work directory stay for a new owner on this machine; a batch that
        # ended or moved to a replacement machine has none here, so they go now.
        await self._session.stop_if_left_behind()

    async def _fail_unfinished(self, failure: Failure) -> None:
        """Every request without a result into the error file as `failure`: OpenAI writes the
        ones an expired window cut off as `batch_expired`; an engine that kept exiting leaves
        its unsent ones as `engine_exited`."""
        done = await self._store.finished_lines(self.batch.id)
        async with self._store.checkpoint_writer(self.batch.id) as writer:
            async for request in pending_requests(self._store, self.batch.input_file_id, done):
                await writer.add(
                    RequestResult(
                        line_index=request.line_index,
                        custom_id=request.custom_id,
                        error_code=failure.code,
                        error_message=failure.message,
                    )
                )
        await self._load_counts()

    async def _end(
        self, outcome: BatchStatus, failure: Failure | None = None, *, stop_engine: bool = False
    ) -> None:
        """Write the result files and stop the engine (when asked), then the terminal decision."""
        files = NO_FILES
        if self.tally.finished:
            files = await self._store.write_result_files(
                self.batch, completed=self.tally.completed, failed=self.tally.failed
            )
        if stop_engine:
            await self._session.stop()
        ending = decide_end(
            self.batch,
            outcome,
            self.tally.counts(),
            files=files,
            failure=failure,
            dispatch_seconds=self.dispatch_seconds,
            dispatch_started_at=self.dispatch_started_at,
            dispatch_ended_at=self.dispatch_ended_at,
        )
        if await self._save(ending):
            code = failure.code if failure is not None else ""
            log.info(
                "batch ended",
                extra=log_fields(**self._ids, status=outcome.value, error_code=code),
            )

    async def _move(self, status: BatchStatus) -> bool:
        return await self._save(decide_move(self.batch, status, self.tally.counts()))

    async def _save(self, transition: Transition) -> bool:
        won = await self._store.save_transition(self.batch.id, self._owner, self.status, transition)
        if won:
            self.status = transition.status
        else:
            self.watch.mark_lost()
        return won

    async def _load_counts(self) -> None:
        completed, failed = await self._store.count_results(self.batch.id)
        self.tally = Tally(self.tally.total, completed, failed)


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has stopped (idempotent)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
