"""What the job state machine works with: the job as it decides on it, the decision it
returns, and the steps several transitions share (move, release, end with an error, ask for a
machine). Pure, like the state machine (jobs.py, fleet.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from neobatch.common.contracts import (
    BatchCancelRequested,
    Event,
    JobStatus,
    JobStatusChanged,
    ProvisionReleaseRequested,
    ProvisionRequested,
)
from neobatch.planner import machines as m
from neobatch.planner import policy
from neobatch.planner.machines import Machine
from neobatch.planner.policy import Limits

DEFAULT_LIMITS = Limits()

# Where a job stands in the forward flow; a status report never moves a job backwards.


BATCH_HANDED_OVER = {
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
    # Issue 15: every provision of the job and its state (machines.py); empty on a job stored
    # before, whose one machine is `provision_id`.
    machines: list[Machine] = []
    # An agent reported a machine with no work left to run or steal (or the batch ended):
    # machines still coming up are released, and no more join.
    work_exhausted: bool = False
    # The job's cost cap (budget.py): when the bill of all its machines reaches it, and
    # whether the agent was asked to stop the batch.
    max_cost_usd: float | None = None
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


def move(
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


def deadline_for(
    status: JobStatus, now: datetime, expires_at: datetime | None, limits: Limits
) -> datetime | None:
    """When the planner stops waiting for whatever `status` waits on."""
    if status is JobStatus.RESOURCE_PREPARING:
        return now + timedelta(seconds=limits.provisioning_seconds + limits.grace_seconds)
    if status in BATCH_HANDED_OVER and expires_at is not None:
        return expires_at + timedelta(seconds=limits.expiry_grace_seconds)
    if status is JobStatus.CANCELLING:
        return now + timedelta(seconds=limits.cancel_seconds)
    return None


def release_ids(job: Job, ids: list[str], now: datetime, reason: str) -> list[Event]:
    return [
        ProvisionReleaseRequested(provision_id=pid, job_id=job.id, reason=reason, occurred_at=now)
        for pid in ids
    ]


def release_held(
    job: Job, now: datetime, reason: str, machines: list[Machine] | None = None
) -> tuple[list[Machine], list[Event]]:
    """Release every machine the job still holds: its machines after that, and the events."""
    machines = m.of_job(job) if machines is None else machines
    ids = m.ids_in(machines, m.HELD)
    return m.with_state(machines, ids, m.RELEASING), release_ids(job, ids, now, reason)


def end_with_error(
    job: Job,
    status: JobStatus,
    now: datetime,
    code: str,
    message: str,
    release_reason: str,
    *,
    machines: list[Machine] | None = None,
    also_release: list[Event] | None = None,
) -> Decision:
    """End the job in `status` with its error; stop a handed-over batch, free every machine."""
    stop: list[Event] = []
    if job.batch_handed_over:
        stop.append(BatchCancelRequested(batch_id=job.batch_id, job_id=job.id, occurred_at=now))
    machines, release = release_held(job, now, release_reason, machines)
    return move(
        job,
        status,
        now,
        message,
        fields={"error_code": code, "error_message": message, "machines": machines},
        events=[*stop, *(also_release or []), *release],
    )


def provision_request(
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
