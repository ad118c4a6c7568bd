"""The job state machine (DESIGN.md "Flow"). Pure: `decide(job, event, now)` → Decision.

The planner owns every transition after `queued`. Each decision names the new status (or
none, for a field-only update), the fields to set and the events to emit; the store writes
them together, compare-and-set on the status and version the decision was made from.

The job's own transitions are here, one small function per event; what each machine's news
means (provisions coming up, failing, lost, released; a machine with no work left) is in
fleet.py, and the steps both share in decisions.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from neobatch.common.contracts import (
    BatchCancelRequested,
    BatchMachineDone,
    BatchMachineWanted,
    BatchStatus,
    BatchStatusReported,
    BatchTerminal,
    Event,
    JobCancelRequested,
    JobQueued,
    JobStatus,
    ProvisionFailed,
    ProvisionLost,
    ProvisionReleased,
    ProvisionRunning,
)
from neobatch.planner import budget, fleet, policy
from neobatch.planner import machines as m
from neobatch.planner.decisions import (
    BATCH_HANDED_OVER,
    DEFAULT_LIMITS,
    DeadLettered,
    DeadlinePassed,
    Decision,
    Job,
    ProjectOverBudget,
    deadline_for,
    end_with_error,
    move,
    provision_request,
    release_held,
    release_ids,
)
from neobatch.planner.machines import Machine
from neobatch.planner.policy import Limits

__all__ = ["DeadLettered", "DeadlinePassed", "Decision", "Job", "ProjectOverBudget", "decide"]


_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.RESOURCE_PREPARING: 1,
    JobStatus.SUBMITTING: 2,
    JobStatus.BATCH_CREATED: 3,
    JobStatus.IN_PROGRESS: 4,
    JobStatus.FINALIZING: 5,
}


_BATCH_RUNNING = {
    BatchStatus.VALIDATING: JobStatus.BATCH_CREATED,
    BatchStatus.IN_PROGRESS: JobStatus.IN_PROGRESS,
    BatchStatus.FINALIZING: JobStatus.FINALIZING,
}


_BATCH_TERMINAL = {
    BatchStatus.COMPLETED: JobStatus.COMPLETED,
    BatchStatus.FAILED: JobStatus.FAILED,
    BatchStatus.EXPIRED: JobStatus.EXPIRED,
    BatchStatus.CANCELLED: JobStatus.CANCELLED,
}
_STOPPED = (BatchStatus.CANCELLED, BatchStatus.FAILED)


Happening = Event | DeadlinePassed | DeadLettered | ProjectOverBudget


def decide(
    job: Job, event: Happening, now: datetime, limits: Limits = DEFAULT_LIMITS
) -> Decision | None:
    """The decision `event` causes for `job` at `now`, or None when it changes nothing."""
    decision = _decide(job, event, now, limits)
    if decision is None:
        return None
    if decision.status is not None:
        expires_at = decision.fields.get("expires_at") or job.expires_at
        decision.fields["deadline_at"] = deadline_for(decision.status, now, expires_at, limits)
    # A capped job's cost deadline, over all its machines, when earlier (budget.py).
    budget.with_cost_deadline(job, decision, now, limits)
    return decision


def _decide(job: Job, event: Happening, now: datetime, limits: Limits) -> Decision | None:
    match event:
        case ProjectOverBudget():
            return budget.stop(job, now, limits, "project monthly budget spent")
        case DeadlinePassed():
            return budget.on_deadline(job, now, limits) or _on_deadline(job, now)
        case DeadLettered():
            return _on_dead_lettered(job, event, now)
        case JobQueued():
            return _on_queued(job, now, limits)
        case JobCancelRequested():
            return _on_cancel_requested(job, now)
        case ProvisionRunning():
            return fleet.on_provision_running(job, event, now)
        case ProvisionFailed():
            return fleet.on_provision_failed(job, event, now)
        case ProvisionLost():
            return fleet.on_provision_lost(job, event, now, limits)
        case ProvisionReleased():
            return fleet.on_provision_released(job, event, now)
        case BatchStatusReported():
            return _on_batch_status(job, event, now)
        case BatchMachineDone():
            return fleet.on_machine_done(job, event, now)
        case BatchMachineWanted():
            return fleet.on_machine_wanted(job, event, now, limits)
        case BatchTerminal():
            return _on_batch_terminal(job, event, now)
    return None


def _on_queued(job: Job, now: datetime, limits: Limits) -> Decision | None:
    if job.status is not JobStatus.QUEUED:
        return None
    if job.cancel_requested:
        return move(job, JobStatus.CANCELLED, now, "cancelled before provisioning")
    # One provision per machine asked for, numbered from 1 (deterministic: a replayed
    # job.queued asks for the same ones); the batch starts on whichever is ready first.
    ids = [policy.provision_id_for(job.id, n) for n in range(1, max(1, job.replicas) + 1)]
    return move(
        job,
        JobStatus.RESOURCE_PREPARING,
        now,
        "provisioning started",
        fields={"provision_id": ids[0], "machines": [Machine(pid, m.REQUESTED) for pid in ids]},
        events=[provision_request(job, pid, now, limits) for pid in ids],
    )


def _on_cancel_requested(job: Job, now: datetime) -> Decision | None:
    if job.status.is_terminal or job.status is JobStatus.CANCELLING:
        return None
    if job.status is JobStatus.QUEUED:
        return move(job, JobStatus.CANCELLED, now, "cancelled before provisioning")
    machines = m.of_job(job)
    events: list[Event] = []
    if job.batch_handed_over:
        # The agent stops dispatching on every machine and writes partial output first; the
        # running machines are released when it reports the batch cancelled. Machines still
        # coming up are of no use to it: released now.
        events.append(BatchCancelRequested(batch_id=job.batch_id, job_id=job.id, occurred_at=now))
        coming = m.ids_in(machines, [m.REQUESTED])
        machines = m.with_state(machines, coming, m.RELEASING)
        events.extend(release_ids(job, coming, now, "job cancelled"))
    else:
        machines, released = release_held(job, now, "job cancelled", machines)
        events.extend(released)
    return move(
        job,
        JobStatus.CANCELLING,
        now,
        "cancel requested",
        fields={"machines": machines},
        events=events,
    )


def _on_batch_status(job: Job, event: BatchStatusReported, now: datetime) -> Decision | None:
    if event.batch_id != job.batch_id or job.status.is_terminal:
        return None
    fields: dict[str, Any] = {
        "request_counts": msgspec.to_builtins(event.request_counts),
        "usage": msgspec.to_builtins(event.usage),
    }
    if event.lines_by_machine:
        fields["machine_lines"] = dict(event.lines_by_machine)
    target = _BATCH_RUNNING.get(event.status)
    # Only a batch running on the job's current machine moves the job: while a lost machine is
    # being replaced (resource_preparing), the agent's reports on the old run update counts only.
    handed_over = job.status in BATCH_HANDED_OVER
    if target is not None and handed_over and _RANK[target] > _RANK[job.status]:
        events: list[Event] = []
        if target is JobStatus.FINALIZING:
            # Every request has its answer: a machine still coming up has nothing to do.
            machines = m.of_job(job)
            coming = m.ids_in(machines, [m.REQUESTED])
            if coming:
                fields["machines"] = m.with_state(machines, coming, m.RELEASING)
                events = release_ids(job, coming, now, "no work left for the machine")
        return move(
            job,
            target,
            event.occurred_at,
            f"batch {event.status.value}",
            fields=fields,
            events=events,
        )
    return Decision(fields=fields, reason="progress")


def _on_batch_terminal(job: Job, event: BatchTerminal, now: datetime) -> Decision | None:
    if event.batch_id != job.batch_id:
        return None
    if job.status.is_terminal:
        return _late_batch_files(job, event)
    status = _BATCH_TERMINAL[event.status]
    # The agent stopped the batch at the job's cost cap (a cancel from an older agent too).
    budget_stop = job.budget_stop_requested and event.status in _STOPPED
    if budget_stop:
        status = JobStatus.FAILED
    elif job.status is JobStatus.CANCELLING:
        # The user asked to cancel; a batch that finished anyway keeps all its output.
        status = JobStatus.CANCELLED
    if status is JobStatus.FAILED and event.error_code in policy.SUBMIT_FAILURE_CODES:
        status = JobStatus.SUBMIT_FAILED
    machines, release = release_held(job, now, f"job {status.value}")
    fields: dict[str, Any] = {
        "request_counts": msgspec.to_builtins(event.request_counts),
        "usage": msgspec.to_builtins(event.usage),
        "output_dataset": event.output_file_id,
        "error_dataset": event.error_file_id,
        "machines": machines,
        "work_exhausted": True,
    }
    if event.dispatch_started_at is not None:  # the bill's idle time (console jobs/bill.py)
        fields["dispatch_started_at"] = event.dispatch_started_at
        fields["dispatch_ended_at"] = event.dispatch_ended_at
    # An error from an earlier attempt never outlives a batch that ended without one.
    fields["error_code"] = event.error_code if event.error_message else None
    fields["error_message"] = event.error_message or None
    if budget_stop:
        fields.update(budget.exceeded_fields(job))
    reason = event.error_message or f"batch {event.status.value}"
    return move(job, status, now, reason, fields=fields, events=release)


def _late_batch_files(job: Job, event: BatchTerminal) -> Decision | None:
    """The job ended before its batch did (machine lost for good, a cancel or expiry the agent
    confirmed late): keep the output and error files the agent wrote since, status unchanged."""
    if not (event.output_file_id or event.error_file_id):
        return None
    return Decision(
        fields={
            "request_counts": msgspec.to_builtins(event.request_counts),
            "usage": msgspec.to_builtins(event.usage),
            "output_dataset": event.output_file_id,
            "error_dataset": event.error_file_id,
        },
        reason=f"batch {event.status.value} after the job ended: its files are kept",
    )


def _on_deadline(job: Job, now: datetime) -> Decision | None:
    """A wait ran out without the answer it waited for: end it in a named state."""
    if job.status is JobStatus.RESOURCE_PREPARING:
        message = (
            "ProvisionTimeout: the resource-manager never reported the machine ready or failed"
        )
        return end_with_error(
            job,
            JobStatus.RESOURCE_FAILED,
            now,
            "ProvisionTimeout",
            message,
            "provisioning timed out",
        )
    if job.status in BATCH_HANDED_OVER:
        message = "the batch passed its completion window and the runtime-agent never ended it"
        return end_with_error(job, JobStatus.EXPIRED, now, "batch_expired", message, "job expired")
    if job.status is JobStatus.CANCELLING:
        machines, release = release_held(job, now, "job cancelled")
        return move(
            job,
            JobStatus.CANCELLED,
            now,
            "cancel not confirmed in time; machine released",
            fields={"machines": machines},
            events=release,
        )
    return None


def _on_dead_lettered(job: Job, event: DeadLettered, now: datetime) -> Decision | None:
    """An event about the job could not be handled: fail it with the reason, free its machine."""
    if job.status.is_terminal:
        return None
    message = (
        f"event_dead_lettered: {event.failed_subject} could not be handled after repeated attempts"
    )
    return end_with_error(job, JobStatus.FAILED, now, "event_dead_lettered", message, "job failed")
