"""The job state machine (DESIGN.md "Flow"). Pure: `decide(job, event, now)` → Decision.

The planner owns every transition after `queued`. Each decision names the new status (or
none, for a field-only update), the fields to set and the events to emit; the store writes
them together, compare-and-set on the status and version the decision was made from.

Long because it is the whole state machine: one small function per event, all in one place,
so every transition a job can make is read (and reviewed) side by side.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from neobatch.common.contracts import (
    BatchCancelRequested,
    BatchRequested,
    BatchStatus,
    BatchStatusReported,
    BatchTerminal,
    Event,
    JobCancelRequested,
    JobQueued,
    JobStatus,
    JobStatusChanged,
    ProvisionFailed,
    ProvisionLost,
    ProvisionReleased,
    ProvisionReleaseRequested,
    ProvisionRequested,
    ProvisionRunning,
)
from neobatch.planner import budget, policy
from neobatch.planner.policy import Limits

DEFAULT_LIMITS = Limits()

# Where a job stands in the forward flow; a status report never moves a job backwards.
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
# Statuses in which a batch has been handed to the runtime-agent.
_BATCH_HANDED_OVER = {
    JobStatus.SUBMITTING,
    JobStatus.BATCH_CREATED,
    JobStatus.IN_PROGRESS,
    JobStatus.FINALIZING,
}


class Job(msgspec.Struct, kw_only=True):
    """What the state machine needs of a job document."""

    id: str
    status: JobStatus
    version: int = 0
    batch_id: str
    provision_id: str | None = None
    batch_handed_over: bool = False
    cancel_requested: bool = False
    template_spec: dict[str, Any] = {}
    serving_name: str = ""
    endpoint: str = ""
    input_dataset: str = ""
    created_by: str = ""
    replicas: int = 1
    provider: str | None = None
    # The job's AIBrix `client` block (validated by the console), passed to the agent.
    client: dict[str, Any] | None = None
    completion_window_seconds: float = 24 * 3600.0
    expires_at: datetime | None = None
    # Whose job it is and when it was accepted: the fair queue takes turns by project.
    project: str = ""
    created_at: datetime | None = None
    # For ranking offers by cost per job: whose throughput applies, how many requests.
    template_id: str = ""
    request_count: int = 0
    # The job's cost cap (planner/budget.py): the current machine's lease, what earlier
    # machines cost, when the cap is reached, and whether the agent was asked to stop.
    max_cost_usd: float | None = None
    lease_price_per_hour: float = 0.0
    leased_at: datetime | None = None
    budget_spent_usd: float = 0.0
    budget_deadline_at: datetime | None = None
    budget_stop_requested: bool = False


class DeadlinePassed(msgspec.Struct, frozen=True):
    """Not an event on the wire: the deadline loop found the job's `deadline_at` passed."""

    job_id: str
    subject = "deadline"


class ProjectOverBudget(msgspec.Struct, frozen=True):
    """Not an event on the wire: the job's project spent its monthly budget and its operator
    asked for running jobs to stop (`project_budgets.stop_running_jobs`)."""

    job_id: str
    subject = "project_over_budget"


class DeadLettered(msgspec.Struct, frozen=True):
    """Not an event on the wire: one of the job's events exhausted its retries (DESIGN rule 2)."""

    job_id: str
    failed_subject: str
    subject = "dead_letter"


class Decision(msgspec.Struct, kw_only=True):
    status: JobStatus | None = None  # None: fields change, status stays
    fields: dict[str, Any] = {}
    events: list[Event] = []
    reason: str = ""
    # Provisioning slots (MAX_CONCURRENT_PROVISIONING): taken on entering resource_preparing,
    # given back on leaving it, in the same transaction as the transition.
    acquire_slot: bool = False
    release_slot: bool = False


def _move(
    job: Job,
    status: JobStatus,
    now: datetime,
    reason: str,
    *,
    fields: dict[str, Any] | None = None,
    events: list[Event] | None = None,
) -> Decision:
    changed = JobStatusChanged(
        job_id=job.id,
        old_status=job.status.value,
        new_status=status.value,
        reason=reason,
        occurred_at=now,
        job_version=job.version + 1,  # what save_decision's `$inc` makes it
    )
    fields = {f"{status.value}_at": now, **(fields or {})}
    preparing = JobStatus.RESOURCE_PREPARING
    return Decision(
        status=status,
        fields=fields,
        events=[*(events or []), changed],
        reason=reason,
        acquire_slot=status is preparing and job.status is not preparing,
        release_slot=job.status is preparing and status is not preparing,
    )


def _deadline(
    status: JobStatus, now: datetime, expires_at: datetime | None, limits: Limits
) -> datetime | None:
    """When the planner stops waiting for whatever `status` waits on."""
    if status is JobStatus.RESOURCE_PREPARING:
        return now + timedelta(seconds=limits.provisioning_seconds + limits.grace_seconds)
    if status in _BATCH_HANDED_OVER and expires_at is not None:
        return expires_at + timedelta(seconds=limits.expiry_grace_seconds)
    if status is JobStatus.CANCELLING:
        return now + timedelta(seconds=limits.cancel_seconds)
    return None


def _release(job: Job, now: datetime, reason: str) -> list[Event]:
    if job.provision_id is None:
        return []
    return [
        ProvisionReleaseRequested(
            provision_id=job.provision_id, job_id=job.id, reason=reason, occurred_at=now
        )
    ]


def decide(
    job: Job,
    event: Event | DeadlinePassed | DeadLettered | ProjectOverBudget,
    now: datetime,
    limits: Limits = DEFAULT_LIMITS,
) -> Decision | None:
    """The decision `event` causes for `job` at `now`, or None when it changes nothing."""
    decision = _decide(job, event, now, limits)
    if decision is not None and decision.status is not None:
        expires_at = decision.fields.get("expires_at") or job.expires_at
        deadline = _deadline(decision.status, now, expires_at, limits)
        if decision.status in _BATCH_HANDED_OVER and not job.budget_stop_requested:
            # A capped job's cost deadline, when earlier (budget.py).
            cost = decision.fields.get("budget_deadline_at", job.budget_deadline_at)
            deadline = budget.earliest(deadline, cost)
        decision.fields["deadline_at"] = deadline
    return decision


def _decide(
    job: Job,
    event: Event | DeadlinePassed | DeadLettered | ProjectOverBudget,
    now: datetime,
    limits: Limits,
) -> Decision | None:
    match event:
        case ProjectOverBudget():
            return _stop_for_budget(job, now, limits, "project monthly budget spent")
        case DeadlinePassed():
            return _on_budget_deadline(job, now, limits) or _on_deadline(job, now)
        case DeadLettered():
            return _on_dead_lettered(job, event, now)
        case JobQueued():
            return _on_queued(job, now, limits)
        case JobCancelRequested():
            return _on_cancel_requested(job, now)
        case ProvisionRunning():
            return _on_provision_running(job, event, now, limits)
        case ProvisionFailed():
            return _on_provision_failed(job, event, now)
        case ProvisionLost():
            return _on_provision_lost(job, event, now, limits)
        case ProvisionReleased():
            return _on_provision_released(job, event, now)
        case BatchStatusReported():
            return _on_batch_status(job, event)
        case BatchTerminal():
            return _on_batch_terminal(job, event, now)
    return None


def _on_queued(job: Job, now: datetime, limits: Limits) -> Decision | None:
    if job.status is not JobStatus.QUEUED:
        return None
    if job.cancel_requested:
        return _move(job, JobStatus.CANCELLED, now, "cancelled before provisioning")
    provision_id = policy.provision_id_for(job.id)
    request = _provision_request(job, provision_id, now, limits)
    return _move(
        job,
        JobStatus.RESOURCE_PREPARING,
        now,
        "provisioning started",
        fields={"provision_id": provision_id},
        events=[request],
    )


def _on_cancel_requested(job: Job, now: datetime) -> Decision | None:
    if job.status.is_terminal or job.status is JobStatus.CANCELLING:
        return None
    if job.status is JobStatus.QUEUED:
        return _move(job, JobStatus.CANCELLED, now, "cancelled before provisioning")
    events: list[Event] = []
    if job.batch_handed_over:
        # The agent stops dispatching and writes partial output first; the machine is
        # released when it reports the batch cancelled.
        events.append(BatchCancelRequested(batch_id=job.batch_id, job_id=job.id, occurred_at=now))
    else:
        events.extend(_release(job, now, "job cancelled"))
    return _move(job, JobStatus.CANCELLING, now, "cancel requested", events=events)


def _on_provision_running(
    job: Job, event: ProvisionRunning, now: datetime, limits: Limits
) -> Decision | None:
    if event.provision_id != job.provision_id or job.status is not JobStatus.RESOURCE_PREPARING:
        return None
    batch = BatchRequested(
        batch_id=job.batch_id,
        job_id=job.id,
        provision_id=event.provision_id,
        input_file_id=job.input_dataset,
        endpoint=job.endpoint,
        owner=job.created_by,
        target=event.endpoint,
        engine=policy.engine_spec(job.template_spec, job.serving_name),
        # The completion window counts from when the batch is accepted, as AIBrix does; a
        # batch moved to a replacement machine keeps its original window.
        expires_at=job.expires_at or now + timedelta(seconds=job.completion_window_seconds),
        runtime=event.provider,
        client=policy.client_spec(job.client, job.template_spec),
        occurred_at=now,
    )
    return _move(
        job,
        JobStatus.SUBMITTING,
        now,
        f"machine ready ({event.provider})",
        fields={
            "batch_handed_over": True,
            "expires_at": batch.expires_at,
            **budget.lease_fields(
                job.max_cost_usd, job.budget_spent_usd, event, now, limits.budget_stop_seconds
            ),
        },
        events=[batch],
    )


def _on_provision_failed(job: Job, event: ProvisionFailed, now: datetime) -> Decision | None:
    if event.provision_id != job.provision_id or job.status.is_terminal:
        return None
    if job.status is JobStatus.CANCELLING:
        return _move(
            job, JobStatus.CANCELLED, now, "cancelled", events=_release(job, now, "job cancelled")
        )
    if job.status is not JobStatus.RESOURCE_PREPARING:
        return None
    message = f"{event.code}: {event.reason}"
    # A replacement for a lost machine that cannot be had also stops the batch the agent still
    # holds (its partial files are attached when it ends, see `_late_batch_files`).
    return _end_with_error(
        job, JobStatus.RESOURCE_FAILED, now, event.code, message, "provisioning failed"
    )


def _on_provision_released(job: Job, event: ProvisionReleased, now: datetime) -> Decision | None:
    if event.provision_id != job.provision_id:
        return None
    fields = {"provision_released_at": now}
    if job.status is JobStatus.CANCELLING and not job.batch_handed_over:
        return _move(job, JobStatus.CANCELLED, now, "cancelled; machine released", fields=fields)
    return Decision(fields=fields, reason="machine released")


def _on_batch_status(job: Job, event: BatchStatusReported) -> Decision | None:
    if event.batch_id != job.batch_id or job.status.is_terminal:
        return None
    fields = {
        "request_counts": msgspec.to_builtins(event.request_counts),
        "usage": msgspec.to_builtins(event.usage),
    }
    target = _BATCH_RUNNING.get(event.status)
    # Only a batch running on the job's current machine moves the job: while a lost machine is
    # being replaced (resource_preparing), the agent's reports on the old run update counts only.
    handed_over = job.status in _BATCH_HANDED_OVER
    if target is not None and handed_over and _RANK[target] > _RANK[job.status]:
        return _move(job, target, event.occurred_at, f"batch {event.status.value}", fields=fields)
    return Decision(fields=fields, reason="progress")


def _on_batch_terminal(job: Job, event: BatchTerminal, now: datetime) -> Decision | None:
    if event.batch_id != job.batch_id:
        return None
    if job.status.is_terminal:
        return _late_batch_files(job, event)
    status = _BATCH_TERMINAL[event.status]
    budget_stop = job.budget_stop_requested and event.status in (
        BatchStatus.CANCELLED,
        BatchStatus.FAILED,
    )
    if budget_stop:
        # The agent stopped the batch at the job's cost cap (a cancel from an older agent too).
        status = JobStatus.FAILED
    elif job.status is JobStatus.CANCELLING:
        # The user asked to cancel; a batch that finished anyway keeps all its output.
        status = JobStatus.CANCELLED
    if status is JobStatus.FAILED and event.error_code in policy.SUBMIT_FAILURE_CODES:
        status = JobStatus.SUBMIT_FAILED
    fields: dict[str, Any] = {
        "request_counts": msgspec.to_builtins(event.request_counts),
        "usage": msgspec.to_builtins(event.usage),
        "output_dataset": event.output_file_id,
        "error_dataset": event.error_file_id,
    }
    if event.dispatch_started_at is not None:  # the bill's idle time (console jobs/bill.py)
        fields["dispatch_started_at"] = event.dispatch_started_at
        fields["dispatch_ended_at"] = event.dispatch_ended_at
    # An error from an earlier attempt never outlives a batch that ended without one.
    fields["error_code"] = event.error_code if event.error_message else None
    fields["error_message"] = event.error_message or None
    if budget_stop:
        fields["error_code"] = budget.BUDGET_EXCEEDED
        fields["error_message"] = budget.exceeded_message(job.max_cost_usd)
    reason = event.error_message or f"batch {event.status.value}"
    return _move(
        job, status, now, reason, fields=fields, events=_release(job, now, f"job {status.value}")
    )


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


def _end_with_error(
    job: Job, status: JobStatus, now: datetime, code: str, message: str, release_reason: str
) -> Decision:
    """End the job in `status` with its error; stop a handed-over batch and free the machine."""
    stop: list[Event] = []
    if job.batch_handed_over:
        stop.append(BatchCancelRequested(batch_id=job.batch_id, job_id=job.id, occurred_at=now))
    return _move(
        job,
        status,
        now,
        message,
        fields={"error_code": code, "error_message": message},
        events=[*stop, *_release(job, now, release_reason)],
    )


def _provision_request(
    job: Job, provision_id: str, now: datetime, limits: Limits
) -> ProvisionRequested:
    return ProvisionRequested(
        provision_id=provision_id,
        job_id=job.id,
        resource=policy.resource_request(
            job.template_spec,
            job.replicas,
            job.provider,
            template_key=job.template_id,
            request_count=job.request_count,
        ),
        deadline_at=now + timedelta(seconds=limits.provisioning_seconds),
        occurred_at=now,
    )


def _on_deadline(job: Job, now: datetime) -> Decision | None:
    """A wait ran out without the answer it waited for: end it in a named state."""
    if job.status is JobStatus.RESOURCE_PREPARING:
        message = (
            "ProvisionTimeout: the resource-manager never reported the machine ready or failed"
        )
        return _end_with_error(
            job,
            JobStatus.RESOURCE_FAILED,
            now,
            "ProvisionTimeout",
            message,
            "provisioning timed out",
        )
    if job.status in _BATCH_HANDED_OVER:
        message = "the batch passed its completion window and the runtime-agent never ended it"
        return _end_with_error(job, JobStatus.EXPIRED, now, "batch_expired", message, "job expired")
    if job.status is JobStatus.CANCELLING:
        return _move(
            job,
            JobStatus.CANCELLED,
            now,
            "cancel not confirmed in time; machine released",
            events=_release(job, now, "job cancelled"),
        )
    return None


def _on_provision_lost(
    job: Job, event: ProvisionLost, now: datetime, limits: Limits
) -> Decision | None:
    """The machine vanished: lease another and resume the batch there, a bounded number of times."""
    if event.provision_id != job.provision_id or job.status.is_terminal:
        return None
    release = _release(job, now, "machine lost")
    if job.status is JobStatus.CANCELLING:
        return _move(job, JobStatus.CANCELLED, now, "cancelled; machine lost", events=release)
    spent = job.budget_spent_usd + budget.spent_on(job.lease_price_per_hour, job.leased_at, now)
    lost_attempt = policy.provision_attempt(event.provision_id)
    attempt = lost_attempt + 1
    if attempt > limits.max_provision_attempts:
        tried = "1 machine was" if lost_attempt == 1 else f"{lost_attempt} machines were"
        message = (
            f"machine_lost: provision {event.provision_id} was lost ({event.reason}); "
            f"{tried} tried (at most {limits.max_provision_attempts})"
        )
        return _end_with_error(job, JobStatus.FAILED, now, "machine_lost", message, "machine lost")
    provision_id = policy.provision_id_for(job.id, attempt)
    request = _provision_request(job, provision_id, now, limits)
    decision = _move(
        job,
        JobStatus.RESOURCE_PREPARING,
        now,
        f"machine lost ({event.reason}); provisioning attempt {attempt}",
        fields={"provision_id": provision_id, "budget_spent_usd": spent},
        events=[*release, request],
    )
    # A replacement does not queue for a provisioning slot: the job was admitted long ago, and
    # with every slot taken its batch would stall (and the lost event be spent) until its window
    # ran out. MAX_CONCURRENT_PROVISIONING bounds how many *new* jobs provision at once.
    decision.acquire_slot = False
    return decision


def _on_dead_lettered(job: Job, event: DeadLettered, now: datetime) -> Decision | None:
    """An event about the job could not be handled: fail it with the reason, free its machine."""
    if job.status.is_terminal:
        return None
    message = (
        f"event_dead_lettered: {event.failed_subject} could not be handled after repeated attempts"
    )
    return _end_with_error(job, JobStatus.FAILED, now, "event_dead_lettered", message, "job failed")


def _on_budget_deadline(job: Job, now: datetime, limits: Limits) -> Decision | None:
    """A capped job reached its cost deadline (budget.py): ask the agent to stop the batch with
    `budget_exceeded`, and wait for it at most `cancel_seconds`; past that, end the job here."""
    if job.status not in _BATCH_HANDED_OVER:
        return None
    if job.budget_stop_requested:
        message = budget.exceeded_message(job.max_cost_usd)
        return _end_with_error(
            job, JobStatus.FAILED, now, budget.BUDGET_EXCEEDED, message, "job over its budget"
        )
    due = job.budget_deadline_at
    if due is None or now < due:
        return None
    return _stop_for_budget(job, now, limits, "cost cap reached")


def _stop_for_budget(job: Job, now: datetime, limits: Limits, why: str) -> Decision | None:
    """Ask the agent to stop a handed-over batch with `budget_exceeded` (once)."""
    if job.status not in _BATCH_HANDED_OVER or job.budget_stop_requested:
        return None
    stop = BatchCancelRequested(
        batch_id=job.batch_id, job_id=job.id, reason=budget.BUDGET_EXCEEDED, occurred_at=now
    )
    return Decision(
        fields={
            "budget_stop_requested_at": now,
            "deadline_at": budget.earliest(
                now + timedelta(seconds=limits.cancel_seconds),
                job.expires_at and job.expires_at + timedelta(seconds=limits.expiry_grace_seconds),
            ),
        },
        events=[stop],
        reason=f"{why}: stopping the batch",
    )
