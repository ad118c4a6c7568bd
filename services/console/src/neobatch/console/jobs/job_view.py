"""The AIBrix-style job view: job document + provision document → `JobOut`. Pure.

Keys are snake_case (AIBrix's wire is camelCase; its own docs and jq examples use snake
case, which we follow). Times are Unix seconds. `status` is the precise job status, so
`resource_failed` and `submit_failed` show as themselves (the OpenAI view maps them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from neobatch.common.logs import redact_text
from neobatch.console.jobs.bill import Bill, bill_of
from neobatch.console.jobs.rules import JOB_TIMESTAMPS
from neobatch.console.jobs.schemas import (
    InputTokensDetails,
    JobEvent,
    JobOut,
    MachineOut,
    MachinesOut,
    PlacementOut,
    ProvisionOut,
    ReplicasOut,
    RequestCounts,
    SshEndpoint,
    Usage,
)
from neobatch.console.wire import unix_seconds_or_none

# Where a provision's error is the job's news (AIBrix §1.6): before the machine is running.
_WAITING_FOR_A_MACHINE = frozenset({"queued", "resource_preparing", "resource_failed"})
# The job's own extra timestamps the planner writes, shown when present.
_EXTRA_TIMESTAMPS = ("expires_at", "updated_at")


class _Step(NamedTuple):
    id: str
    label: str
    status: str
    source: str
    field: str
    message: str


# aibrix-reference §1.5, in its tie-break rank order (same-second events sort by this).
# Sources name our service that owns the step (AIBrix's "mds" is our runtime-agent).
_STEPS = (
    _Step("queued", "Queued", "queued", "console", "queued_at", "Console accepted the job."),
    _Step(
        "resource_preparing",
        "Provisioning",
        "resource_preparing",
        "planner",
        "resource_preparing_at",
        "Resource provisioning started.",
    ),
    _Step(
        "resource_failed",
        "Provision failed",
        "resource_failed",
        "planner",
        "resource_failed_at",
        "Resource provisioning failed.",
    ),
    _Step(
        "submitting",
        "Submitting",
        "submitting",
        "planner",
        "submitting_at",
        "The machine is ready; the batch is being submitted to the runtime agent.",
    ),
    _Step(
        "submit_failed",
        "Submit failed",
        "submit_failed",
        "planner",
        "submit_failed_at",
        "The batch could not be started on the machine.",
    ),
    _Step(
        "batch_created",
        "Batch created",
        "batch_created",
        "planner",
        "batch_created_at",
        "The runtime agent accepted the batch.",
    ),
    _Step(
        "in_progress",
        "In progress",
        "in_progress",
        "runtime-agent",
        "in_progress_at",
        "The runtime agent started processing requests.",
    ),
    _Step(
        "finalizing",
        "Finalizing",
        "finalizing",
        "runtime-agent",
        "finalizing_at",
        "The runtime agent started writing the output files.",
    ),
    _Step(
        "cancel_requested",
        "Cancel requested",
        "cancelling",
        "console",
        "cancel_requested_at",
        "Console requested cancellation.",
    ),
    _Step(
        "cancelling", "Cancelling", "cancelling", "planner", "cancelling_at", "Cancelling the job."
    ),
    _Step(
        "completed", "Completed", "completed", "runtime-agent", "completed_at", "Batch completed."
    ),
    _Step("failed", "Failed", "failed", "runtime-agent", "failed_at", "Batch failed."),
    _Step("expired", "Expired", "expired", "planner", "expired_at", "Batch expired."),
    _Step("cancelled", "Cancelled", "cancelled", "planner", "cancelled_at", "Batch cancelled."),
)
# Steps whose message is the job's error when it has one.
_ERROR_STEPS = frozenset({"failed", "resource_failed", "submit_failed"})


def build_events(job: dict[str, Any], error_message: str) -> list[JobEvent]:
    """The timeline from the job's timestamps; unset timestamps give no event."""
    # A resource or submit failure is the precise reason; a generic "failed" beside it
    # would only repeat it (AIBrix suppresses it the same way).
    precise_failure = job.get("resource_failed_at") or job.get("submit_failed_at")
    ranked = []
    for rank, step in enumerate(_STEPS):
        at = unix_seconds_or_none(job.get(step.field))
        if at is None or (step.id == "failed" and precise_failure):
            continue
        message = step.message
        if step.id in _ERROR_STEPS and error_message:
            message = error_message
        event = JobEvent(
            id=step.id,
            label=step.label,
            status=step.status,
            source=step.source,
            at=at,
            message=message,
        )
        ranked.append((at, rank, event))
    created = unix_seconds_or_none(job.get("created_at"))
    if job.get("retry_of") and created is not None:
        # Issue 18: first in the timeline, what this job is a retry of.
        event = JobEvent(
            id="retry_of",
            label="Retry",
            status="queued",
            source="console",
            at=created,
            message=f"A retry of job {job['retry_of']}: its failed and unfinished lines.",
        )
        ranked.append((created, -1, event))
    ranked.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in ranked]


def request_counts(job: dict[str, Any]) -> RequestCounts:
    counts = job.get("request_counts") or {}
    return RequestCounts(
        total=int(counts.get("total") or 0),
        completed=int(counts.get("completed") or 0),
        failed=int(counts.get("failed") or 0),
    )


def usage_view(job: dict[str, Any]) -> Usage:
    """The job's token usage, OpenAI's shape (cached input tokens under input_tokens_details)."""
    usage = job.get("usage") or {}
    return Usage(
        input_tokens=int(usage.get("input_tokens") or 0),
        input_tokens_details=InputTokensDetails(cached_tokens=int(usage.get("cached_tokens") or 0)),
        output_tokens=int(usage.get("output_tokens") or 0),
        total_tokens=int(usage.get("total_tokens") or 0),
    )


def provision_view(provision: dict[str, Any], *, include_endpoint: bool) -> ProvisionOut:
    """The provision block. Only identifiers and state: never credentials or raw provider data."""
    endpoint = provision.get("endpoint") or None
    return ProvisionOut(
        provision_id=provision["_id"],
        provider=provision.get("provider") or "",
        status=provision.get("status") or "",
        region=provision.get("region") or "",
        error_message=redact_text(provision.get("error_message") or ""),
        created_at=unix_seconds_or_none(provision.get("created_at")),
        updated_at=unix_seconds_or_none(provision.get("updated_at")),
        # The SSH endpoint says where a machine the owner pays for can be reached; nobody
        # else needs it.
        endpoint=(
            SshEndpoint(
                host=endpoint.get("host"),
                port=endpoint.get("port"),
                username=endpoint.get("username"),
            )
            if include_endpoint and endpoint
            else None
        ),
    )


def placement_view(provision: dict[str, Any] | None) -> PlacementOut | None:
    """The rule that chose the provision's offer; None if none was chosen (or unreadable)."""
    recorded = (provision or {}).get("placement")
    if not recorded:
        return None
    try:
        return msgspec.convert(recorded, PlacementOut)
    except msgspec.ValidationError:
        return None  # written by another version: not worth failing the job view for


def machines_view(job: dict[str, Any], provisions: Sequence[dict[str, Any]]) -> MachinesOut:
    """The job's machines from its provisions, with each one's share of the lines the agent
    reported (`machine_lines`, provision id → lines finished on it)."""
    lines = job.get("machine_lines") or {}
    ordered = sorted(provisions, key=lambda p: (_provision_number(p["_id"]), p["_id"]))
    items = []
    for provision in ordered:
        lease = provision.get("lease") or provision.get("offer") or {}
        price = lease.get("price_per_hour")
        items.append(
            MachineOut(
                provision_id=provision["_id"],
                provider=provision.get("provider") or "",
                gpu_type=lease.get("gpu_type") or None,
                price_per_hour=float(price) if isinstance(price, int | float) else None,
                status=provision.get("status") or "",
                lines=int(lines.get(provision["_id"]) or 0),
            )
        )
    return MachinesOut(
        requested=int((job.get("resource_request") or {}).get("replicas") or 1),
        running=sum(item.status == "running" for item in items),
        released=sum(item.status == "released" for item in items),
        items=items,
    )


def _provision_number(provision_id: str) -> int:
    """The planner numbers a job's provisions from 1 (`prov_<job>_<n>`)."""
    tail = provision_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def job_view(
    job: dict[str, Any],
    provision: dict[str, Any] | None,
    *,
    caller: str,
    bill: Bill | None = None,
    machines: MachinesOut | None = None,
) -> JobOut:
    """The response body of every /api/v1/jobs route (`bill`: none yet when not given)."""
    # Error text may quote a provider's or engine's reply; mask anything key-like in it.
    error_message = redact_text(job.get("error_message") or "")
    if not error_message and provision and job.get("status") in _WAITING_FOR_A_MACHINE:
        # The provision's error explains a job still waiting for its machine or failed for
        # want of one; past that it is history (a retried offer, a release retry).
        error_message = redact_text(provision.get("error_message") or "")
    times = {
        field: unix_seconds_or_none(job.get(field))
        for field in (*JOB_TIMESTAMPS, *_EXTRA_TIMESTAMPS)
    }
    return JobOut(
        id=job["_id"],
        status=job["status"],
        batch_id=job.get("batch_id"),
        provision_id=job.get("provision_id"),
        provision=(
            provision_view(provision, include_endpoint=caller == job.get("created_by"))
            if provision
            else None
        ),
        events=build_events(job, error_message),
        name=job.get("name") or "",
        endpoint=job.get("endpoint") or "",
        model=job.get("serving_name") or "",
        model_id=job.get("model_id") or "",
        model_template_name=job.get("model_template_name") or "",
        model_template_version=job.get("model_template_version") or "",
        input_dataset=job.get("input_dataset") or "",
        output_dataset=job.get("output_dataset"),
        error_dataset=job.get("error_dataset"),
        completion_window=job.get("completion_window") or "",
        request_counts=request_counts(job),
        usage=usage_view(job),
        error_code=job.get("error_code"),
        error_message=error_message or None,
        metadata=job.get("metadata") or {},
        provider=job.get("provider"),
        resource_request=ReplicasOut(
            replicas=(job.get("resource_request") or {}).get("replicas", 1)
        ),
        created_by=job.get("created_by") or "",
        bill=bill if bill is not None else bill_of(job, [], None),
        machines=machines if machines is not None else machines_view(job, []),
        **times,
        placement=placement_view(provision),
        max_cost_usd=job.get("max_cost_usd"),
        retry_of=job.get("retry_of"),
    )
