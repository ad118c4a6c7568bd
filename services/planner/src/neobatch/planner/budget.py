"""A job's cost cap while it runs (issue 16, `max_cost_usd`), over all its machines (issue 15).
Pure: no I/O; called by `jobs.decide` and fleet.py.

The console refuses a job whose quote is above its cap; this is the cap on what the job
really spends. Each machine's `provision.running` says when it was leased and at what price
(kept on the job's `machines`, machines.py), so the moment the bill of all the job's machines
reaches the cap is known in advance: the *cost deadline*, the last moment at which

    sum over the job's machines of  price x whole billing increments from billed_from to then

is still within the cap, less `stop_seconds` (`NEOBATCH_BUDGET_STOP_SECONDS`, the time a
stop takes — files, engine stop, release — during which the machines are still billed).
`billed_from` and the increments are `common.billing`'s, as the bill counts them. A machine
lost or released counts up to then (`ended_at`); one still held or being released counts on.
A machine priced 0 (the SSH pool by default) adds nothing. The deadline is worked out again
whenever the job's machines change (one joins, is lost, is released), and the job's
`deadline_at` is the earlier of it and its completion-window deadline, so the existing
deadline loop notices it: no new loop, no polling of provisions.

A project's monthly budget (`project_budgets`, console) stops its running jobs the same way,
but only when its operator set `stop_running_jobs`: the planner looks every
`NEOBATCH_BUDGET_CHECK_SECONDS` at those projects' spend this month (`ProjectOverBudget`).

At the cost deadline the planner asks the agent to stop the batch with the reason
`budget_exceeded` (one `batch.cancel_requested` for the batch, whatever its machines): the agent
keeps every finished line in the output file, writes each unsent line to the error file with
code `budget_exceeded`, stops every machine and ends the batch `failed`/`budget_exceeded`; the
planner then releases every machine still held and the job is `failed` with `error_code`
`budget_exceeded`. Machines still coming up are released at once and none joins or replaces
a lost one after the stop. A stop, not a kill: the agent writes the files from what it
checkpointed, and a job turns terminal only with them in place. If the agent does not answer
within `NEOBATCH_CANCEL_TIMEOUT_SECONDS` the planner ends the job itself and releases every
machine (its files are attached when the agent ends late).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from neobatch.common import billing
from neobatch.common.contracts import BatchCancelRequested, Event, JobStatus
from neobatch.planner import machines as m
from neobatch.planner.decisions import (
    BATCH_HANDED_OVER,
    Decision,
    Job,
    deadline_for,
    end_with_error,
    release_ids,
)
from neobatch.planner.machines import Machine
from neobatch.planner.policy import Limits

BUDGET_EXCEEDED = "budget_exceeded"
_MICRO = timedelta(microseconds=1)
_NEVER = datetime.max.replace(tzinfo=UTC)


def billed_from(machine: Machine) -> datetime | None:
    """When the machine's bill begins (None: it never ran, as far as the job knows)."""
    if machine.running_at is None:
        return None
    if machine.provider in billing.BILLED_FROM_READY or machine.leased_at is None:
        return machine.running_at
    return machine.leased_at


def machine_usd(machine: Machine, at: datetime) -> float:
    """What the machine's bill is at `at` (a started increment in full, as providers bill)."""
    start = billed_from(machine)
    if start is None or machine.price_per_hour <= 0:
        return 0.0
    end = at if machine.ended_at is None else min(at, machine.ended_at)
    increment = billing.INCREMENTS.get(machine.provider, billing.DEFAULT_INCREMENT)
    seconds = billing.billed_seconds((end - start).total_seconds(), increment)
    return seconds * machine.price_per_hour / 3600


def spent_usd(machines: Iterable[Machine], at: datetime) -> float:
    return sum(machine_usd(machine, at) for machine in machines)


def cost_deadline(
    max_cost_usd: float | None, machines: Iterable[Machine], stop_seconds: float
) -> datetime | None:
    """When to begin stopping the job so the bill of all its machines stays within
    `max_cost_usd` (None: no cap, or no machine is billed on)."""
    machines = list(machines)
    billed_on = [
        mc
        for mc in machines
        if mc.ended_at is None and mc.price_per_hour > 0 and billed_from(mc) is not None
    ]
    if max_cost_usd is None or not billed_on:
        return None
    cap = max_cost_usd + 1e-9
    first = min(billed_from(mc) or _NEVER for mc in billed_on)
    if spent_usd(machines, first) > cap:
        return first
    # The bill only grows, in steps, and without bound while a priced machine runs: find a
    # moment past the cap (the cap at the machines' combined rate, doubled until past), then
    # bisect to the microsecond (datetimes' precision, where every increment's end falls).
    rate = sum(mc.price_per_hour for mc in billed_on) / 3600
    low, high = 0, int(max_cost_usd / rate * 1_000_000) + 1
    while spent_usd(machines, first + high * _MICRO) <= cap:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if spent_usd(machines, first + mid * _MICRO) <= cap:
            low = mid
        else:
            high = mid
    last = first + low * _MICRO
    return max(first, last - timedelta(seconds=stop_seconds))


def earliest(*moments: datetime | None) -> datetime | None:
    known = [moment for moment in moments if moment is not None]
    return min(known) if known else None


def with_cost_deadline(job: Job, decision: Decision, now: datetime, limits: Limits) -> None:
    """A capped job's decision: its cost deadline again when its machines change, and its
    `deadline_at` the earlier of that and its status's own (`deadline_for`)."""
    status = decision.status or job.status
    stopping = job.budget_stop_requested or "budget_stop_requested_at" in decision.fields
    if job.max_cost_usd is None or status not in BATCH_HANDED_OVER or stopping:
        return
    if "machines" in decision.fields:
        cost = cost_deadline(
            job.max_cost_usd, decision.fields["machines"], limits.budget_stop_seconds
        )
        decision.fields["budget_deadline_at"] = cost
    elif decision.status is not None:
        cost = job.budget_deadline_at
    else:
        return
    own = decision.fields.get("deadline_at")
    if decision.status is None:
        own = deadline_for(job.status, now, job.expires_at, limits)
    decision.fields["deadline_at"] = earliest(own, cost)


def on_deadline(job: Job, now: datetime, limits: Limits) -> Decision | None:
    """A capped job reached its cost deadline: ask the agent to stop the batch with
    `budget_exceeded`, and wait for it at most `cancel_seconds`; past that, end the job here.
    None: the deadline passed was not the cost deadline."""
    if job.status not in BATCH_HANDED_OVER:
        return None
    if job.budget_stop_requested:
        return ended_over_budget(job, now)
    due = job.budget_deadline_at
    if due is None or now < due:
        return None
    return stop(job, now, limits, "cost cap reached")


def stop(job: Job, now: datetime, limits: Limits, why: str) -> Decision | None:
    """Ask the agent to stop a handed-over batch with `budget_exceeded` (once), on every
    machine; machines still coming up are released now and no more join or replace."""
    if job.status not in BATCH_HANDED_OVER or job.budget_stop_requested:
        return None
    machines = m.of_job(job)
    coming = m.ids_in(machines, [m.REQUESTED])
    events: list[Event] = [
        BatchCancelRequested(
            batch_id=job.batch_id, job_id=job.id, reason=BUDGET_EXCEEDED, occurred_at=now
        ),
        *release_ids(job, coming, now, "job over its budget"),
    ]
    return Decision(
        fields={
            "budget_stop_requested_at": now,
            "work_exhausted": True,
            "machines": m.with_state(machines, coming, m.RELEASING),
            "deadline_at": earliest(
                now + timedelta(seconds=limits.cancel_seconds),
                job.expires_at and job.expires_at + timedelta(seconds=limits.expiry_grace_seconds),
            ),
        },
        events=events,
        reason=f"{why}: stopping the batch",
    )


def ended_over_budget(
    job: Job,
    now: datetime,
    *,
    machines: list[Machine] | None = None,
    also_release: list[Event] | None = None,
) -> Decision:
    """End the job `failed`/`budget_exceeded` here; every machine it holds is released."""
    return end_with_error(
        job,
        JobStatus.FAILED,
        now,
        BUDGET_EXCEEDED,
        exceeded_message(job.max_cost_usd),
        "job over its budget",
        machines=machines,
        also_release=also_release,
    )


def exceeded_fields(job: Job) -> dict[str, Any]:
    """The error of a job whose batch the agent stopped at the cap."""
    return {"error_code": BUDGET_EXCEEDED, "error_message": exceeded_message(job.max_cost_usd)}


def exceeded_message(max_cost_usd: float | None) -> str:
    """The job's error: its own cap, or (no cap) its project's monthly budget."""
    what = (
        f"the job's machines reached its max_cost_usd of ${max_cost_usd:.4f}"
        if max_cost_usd is not None
        else "the project spent its monthly budget and its operator stops running jobs"
    )
    return f"{BUDGET_EXCEEDED}: {what}; finished lines are in the output file, the rest in the error file"
