"""Applying decisions: events, the queue of jobs waiting for a provisioning slot, deadlines.

`apply` is the one path by which a job changes: load → decide → save (compare-and-set, with
its events and slot changes in one transaction), retried when another writer got there first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from neobatch.common.aio import pause, wait_for_event
from neobatch.common.budget_store import BudgetStore, month_start
from neobatch.common.clock import Clock
from neobatch.common.contracts import Event, JobQueued, JobStatus
from neobatch.common.errors import NotFound
from neobatch.common.logs import log_fields
from neobatch.planner import jobs, policy
from neobatch.planner.job_doc import written_job
from neobatch.planner.jobs import DeadLettered, DeadlinePassed, Decision, Job, ProjectOverBudget
from neobatch.planner.policy import Limits
from neobatch.planner.store import AtMachineQuota, BatchConflict, JobStore, NoSlotFree

log = logging.getLogger("neobatch.planner")

MAX_CAS_ATTEMPTS = 5
# Other planner instances free slots too; look at the queue at least this often.
QUEUE_POLL_SECONDS = 1.0
DEADLINE_POLL_SECONDS = 1.0
# Jobs remembered as this planner last wrote them (see `apply`).
JOB_CACHE_SIZE = 10_000
# Queued jobs started per transaction: the round trips per batch do not grow with it.
PLAN_BATCH = 16


class LostRace(RuntimeError):
    """The job kept changing under us; the message is retried later."""


class Planner:
    def __init__(
        self, store: JobStore, clock: Clock, notify_outbox: Callable[[], None], limits: Limits
    ) -> None:
        self._store = store
        self._clock = clock
        self._notify = notify_outbox
        self._limits = limits
        self._slot_freed = asyncio.Event()
        # One planning pass at a time per process: concurrent passes would only race each
        # other for the same oldest jobs and slots. A request during a pass runs one more.
        self._planning = False
        self._plan_again = False
        # Each job as this planner last wrote it. Every writer of a job bumps its version, so
        # a compare-and-set made from a stale copy fails and the job is read again: the
        # copy only saves the read after our own write.
        self._written: dict[str, Job] = {}

    async def apply(
        self, job_id: str, event: Event | DeadlinePassed | DeadLettered | ProjectOverBudget
    ) -> bool:
        """Apply `event` to the job; False only when it needed a provisioning slot and none was
        free, or machines its project's quota has no room for."""
        for _ in range(MAX_CAS_ATTEMPTS):
            now = self._clock.now()
            job = self._written.pop(job_id, None)
            decision = jobs.decide(job, event, now, self._limits) if job is not None else None
            if decision is None:
                # No copy, or nothing to do by it: decide on the job as stored (another
                # planner instance may have moved it on).
                try:
                    job = await self._store.get_job(job_id)
                except NotFound:
                    log.warning(
                        "event for unknown job ignored",
                        extra=log_fields(job_id=job_id, subject=event.subject),
                    )
                    return True
                decision = jobs.decide(job, event, now, self._limits)
                if decision is None:
                    self._remember(job)
                    return True
            try:
                won = await self._store.save_decision(
                    job, decision, now, max_machines=self._limits.max_machines_per_project
                )
            except (NoSlotFree, AtMachineQuota):
                return False
            if won:
                self._remember(written_job(job, decision))
                if decision.events:
                    self._notify()
                if decision.release_slot or (decision.status and decision.status.is_terminal):
                    # A freed slot, or machines a project no longer holds (its quota).
                    self._slot_freed.set()
                self._log_transition(job_id, job.status, decision)
                return True
        raise LostRace(
            f"job {job_id} changed {MAX_CAS_ATTEMPTS} times while handling {event.subject}"
        )

    async def plan_waiting(self) -> None:
        """Start provisioning for queued jobs while slots are free, taking turns by project
        (the fair queue, `policy.choose_next`); a project at its machine quota waits.

        When a pass is already running in this process, it is asked to look again and this
        call returns at once (the queue loop retries any pass that fails).
        """
        self._plan_again = True
        if self._planning:
            return
        self._planning = True
        try:
            while self._plan_again:
                self._plan_again = False
                await self._plan_pass()
        finally:
            self._planning = False

    async def _next_queued(self) -> tuple[list[Job], bool]:
        """The next queued jobs to start, fairly across projects (policy.choose_next), and
        whether more jobs are queued than were looked at."""
        heads = await self._store.list_queued_heads()
        if not heads:
            return [], False
        in_use = await self._store.list_machines_in_use()
        projects = policy.projects_to_consider(heads, in_use, PLAN_BATCH)
        queued = await self._store.list_queued(projects, PLAN_BATCH)
        quotas = await self._store.list_machine_quotas(projects)
        chosen = policy.choose_next(
            queued,
            in_use,
            PLAN_BATCH,
            max_machines=self._limits.max_machines_per_project,
            quotas=quotas,
        )
        return chosen, len(chosen) == PLAN_BATCH

    async def _plan_pass(self) -> None:
        while True:
            queued, more = await self._next_queued()
            if not queued:
                return
            now = self._clock.now()
            batch = []
            for job in queued:
                decision = jobs.decide(job, JobQueued(job_id=job.id), now, self._limits)
                if decision is not None:
                    batch.append((job, decision))
            try:
                written, slots_ran_out = await self._store.save_queued_batch(
                    batch, now, max_machines=self._limits.max_machines_per_project
                )
            except BatchConflict:
                # Someone else moved one of them (a cancel, another planner): one by one.
                for job, _ in batch:
                    if not await self.apply(job.id, JobQueued(job_id=job.id)):
                        return
                continue
            if written:
                self._notify()
                for job, decision in batch[:written]:
                    self._remember(written_job(job, decision))
                    self._log_transition(job.id, job.status, decision)
            if not written or slots_ran_out or not more:
                return  # no slot (the next freed slot wakes us), or none left we may start

    def _remember(self, job: Job) -> None:
        if job.status.is_terminal:
            return  # nothing more happens to it
        if len(self._written) >= JOB_CACHE_SIZE:
            self._written.pop(next(iter(self._written)))  # the oldest
        self._written[job.id] = job

    @staticmethod
    def _log_transition(job_id: str, old: JobStatus, decision: Decision) -> None:
        if decision.status is not None:
            log.info(
                "job transition",
                extra=log_fields(
                    job_id=job_id, old=old.value, new=decision.status.value, reason=decision.reason
                ),
            )

    async def expire_overdue(self) -> int:
        overdue = await self._store.list_overdue(self._clock.now())
        for job in overdue:
            await self.apply(job.id, DeadlinePassed(job.id))
        return len(overdue)

    async def run_queue(self) -> None:
        while True:
            self._slot_freed.clear()
            await self.plan_waiting()
            with contextlib.suppress(TimeoutError):
                await wait_for_event(self._slot_freed, QUEUE_POLL_SECONDS)

    async def stop_over_budget(self, budgets: BudgetStore) -> int:
        """Stop the running jobs of every project over its monthly budget whose operator asked
        for it (`stop_running_jobs`); how many were asked to stop."""
        now = self._clock.now()
        stopped = 0
        for doc in await budgets.list_stopping_budgets():
            project, limit = doc["_id"], doc.get("monthly_usd")
            if limit is None or await budgets.find_month_spend(
                project, month_start(now), now
            ) < float(limit):
                continue
            for job_id in await self._store.list_running_job_ids(project):
                await self.apply(job_id, ProjectOverBudget(job_id))
                stopped += 1
        return stopped

    async def run_budgets(self, budgets: BudgetStore, interval_seconds: float) -> None:
        while True:
            await self.stop_over_budget(budgets)
            await pause(interval_seconds)

    async def run_deadlines(self) -> None:
        while True:
            await self.expire_overdue()
            await pause(DEADLINE_POLL_SECONDS)
