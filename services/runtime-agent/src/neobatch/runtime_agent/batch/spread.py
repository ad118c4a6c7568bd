"""The batch run of a batch spread over several machines (issue 15): once per batch, by the
agent holding the batch's lease, as for one machine.

It validates the input, cuts the batch into chunks (`chunks.plan_chunks`), moves the batch to
in_progress (its machines may then be claimed, `machine_run`), reports whole-batch progress
with each machine's share, and ends the batch: every line has a result → finalizing →
completed; cancel or expiry → every machine stopped, finished lines kept, the rest
`batch_cancelled`/`batch_expired`; no machine left and one could not run its engine → failed.
Before anything is written at the end, every chunk claim is revoked and every active machine
ended (`batch.machine_done`, `batch_ended`): no late result can land after the files.
The output and error files are the union of every machine's pages, in input order, each line
once (`results.reading`: the first stored copy wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from neobatch.common.aio import wait_for_event
from neobatch.common.batch_input import is_blank, parse_request, strip_bom
from neobatch.common.contracts import BatchMachineWanted, BatchStatus
from neobatch.common.logs import log_fields
from neobatch.runtime_agent.batch.batches import Failure, plan_outcome
from neobatch.runtime_agent.batch.chunks import plan_chunks
from neobatch.runtime_agent.batch.machines import (
    ACTIVE,
    BATCH_ENDED,
    dispatch_window,
    failed_machine,
    lines_by_machine,
    no_machine_left,
    spread_progress,
)
from neobatch.runtime_agent.batch.run import PROGRESS_INTERVAL_SECONDS, BatchRun
from neobatch.runtime_agent.dispatch.order import prefix_key

log = logging.getLogger("neobatch.runtime_agent.batch.spread")

S = BatchStatus
# How often the batch run looks at its machines and counts the results.
TICK_SECONDS = 0.5
# How often a batch with lines left and no machine asks for one again (the planner ignores a
# request while a machine for it is coming up; a lost request is asked again).
WANTED_INTERVAL_SECONDS = 30.0
CANCELLED_MESSAGE = "The batch was cancelled before this request was executed."


class SpreadRun(BatchRun):
    """`BatchRun` whose in_progress phase watches machines instead of running an engine."""

    async def _run(self) -> None:
        machines = self._store.machines
        batch_id = self.batch.id
        await self._ensure_chunks()
        await self._load_counts()
        last_report = last_wanted = float("-inf")
        loop = asyncio.get_running_loop()
        while True:
            if await machines.promote(batch_id):
                self.machines_ready()  # claim them now, not at the next poll
            if self.watch.lost:
                log.warning("lease lost; leaving the batch", extra=log_fields(**self._ids))
                return
            await self._load_counts()
            if self.tally.finished >= self.tally.total:
                break
            if self.watch.cancel_requested or self.watch.expired:
                break
            found = await machines.list_machines(batch_id)
            # A chunk claimed by a machine just as it ended goes back to the others.
            await machines.free_orphans(batch_id, [m.id for m in found if m.status in ACTIVE])
            failed = failed_machine(found)
            if failed is not None:
                message = failed.error_message or "no machine could run the engine"
                await self._end(S.FAILED, Failure(failed.error_code or "engine_not_ready", message))
                return
            # The chunks are read only once no machine is left (not on every tick).
            wanted_due = loop.time() - last_wanted >= WANTED_INTERVAL_SECONDS
            if wanted_due and no_machine_left(found) and await machines.has_open(batch_id):
                last_wanted = loop.time()
                if not await self._want_machine(found):
                    return
            if loop.time() - last_report >= PROGRESS_INTERVAL_SECONDS:
                last_report = loop.time()
                if not await self._report(found):
                    return
            with contextlib.suppress(TimeoutError):
                await wait_for_event(self.watch.interrupted, TICK_SECONDS)
        outcome = plan_outcome(
            status=self.status,
            all_finished=self.tally.finished >= self.tally.total,
            cancel_requested=self.watch.cancel_requested,
            expired=self.watch.expired,
        )
        await self._wind_down(outcome)

    def machines_ready(self) -> None:
        """Set by the runner: machines may be claimed (wakes it)."""

    async def _want_machine(self, found: list) -> bool:
        """Every machine ended with lines left: ask the planner for one (it leases a
        replacement, or ends the job when it may lease no more). False = lease lost."""
        left = self.tally.total - self.tally.finished
        log.warning(
            "lines left and no machine running; asking for one",
            extra=log_fields(**self._ids, lines_left=left, machines=len(found)),
        )
        event = BatchMachineWanted(
            batch_id=self.batch.id, job_id=self.batch.job_id, lines_left=left
        )
        won = await self._store.save_progress(
            self.batch.id, self._owner, S.IN_PROGRESS, {}, [event]
        )
        if not won:
            self.watch.mark_lost()
        return won

    async def _report(self, found: list) -> bool:
        counts = self.tally.counts()
        event = spread_progress(self.batch.id, self.batch.job_id, counts, found)
        fields = {"request_counts": counts, "lines_by_machine": lines_by_machine(found)}
        try:
            won = await self._store.save_progress(
                self.batch.id, self._owner, S.IN_PROGRESS, fields, [event]
            )
        except Exception:
            log.warning("progress report failed", exc_info=True, extra=log_fields(**self._ids))
            return True
        if not won:
            self.watch.mark_lost()
        return won

    async def _ensure_chunks(self) -> None:
        """Cut the batch into chunks, once: the cut is the same whoever makes it (same input,
        same replicas), and chunk ids are deterministic."""
        machines = self._store.machines
        if await machines.has_chunks(self.batch.id):
            return
        keys: list[int] = []
        index = -1
        async for raw in self._store.input_lines(self.batch.input_file_id, self._max_line_bytes):
            index += 1
            raw = strip_bom(raw, index)
            if is_blank(raw):
                keys.append(keys[-1] if keys else 0)
            else:
                keys.append(prefix_key(parse_request(raw, index).body)[0])
        ranges = plan_chunks(keys, self.batch.replicas)
        await machines.insert_chunks(self.batch.id, ranges)
        log.info(
            "batch cut into chunks",
            extra=log_fields(**self._ids, chunks=len(ranges), replicas=self.batch.replicas),
        )

    async def _stop_machines(self) -> None:
        """No chunk held any more, every active machine ended (`batch_ended`)."""
        machines = self._store.machines
        await machines.revoke_all(self.batch.id)
        for machine in await machines.list_machines(self.batch.id):
            if machine.status in ACTIVE:
                await machines.end_machine(machine.id, BATCH_ENDED)
        found = await machines.list_machines(self.batch.id)
        started, ended = dispatch_window(found)
        if started is not None:
            self.dispatch_started_at = started
            self.dispatch_ended_at = ended or self._clock.now()
            self.dispatch_seconds = _seconds(started, self.dispatch_ended_at)

    async def _wind_down(self, outcome: BatchStatus) -> None:
        await self._stop_machines()
        await self._load_counts()
        if outcome is S.CANCELLED and self.tally.finished < self.tally.total:
            await self._fail_unfinished(Failure("batch_cancelled", CANCELLED_MESSAGE))
        await super()._wind_down(outcome)

    async def _end(
        self, outcome: BatchStatus, failure: Failure | None = None, *, stop_engine: bool = False
    ) -> None:
        await self._stop_machines()
        await super()._end(outcome, failure, stop_engine=False)
        # A machine added while the batch ended is released too.
        await self._stop_machines()


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())
