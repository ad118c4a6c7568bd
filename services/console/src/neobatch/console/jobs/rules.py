"""Rules for accepting and cancelling a job: the endpoint check, the stored document and the
events each change emits. Pure: time is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from neobatch.common.batch_input import ValidationReport
from neobatch.common.contracts import (
    Event,
    JobCancelRequested,
    JobQueued,
    JobStatus,
    JobStatusChanged,
)
from neobatch.common.errors import InvalidInput
from neobatch.console.errors import Forbidden
from neobatch.console.jobs.schemas import CreateJob
from neobatch.console.jobs.window import parse_completion_window

# What the engine (vLLM or the simulator) serves; a template that lists no endpoints is
# taken to support these.
DEFAULT_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")

# Every timestamp a job document may carry, in lifecycle order.
JOB_TIMESTAMPS = (
    "created_at",
    "queued_at",
    "resource_preparing_at",
    "submitting_at",
    "batch_created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancel_requested_at",
    "cancelling_at",
    "cancelled_at",
    "resource_failed_at",
    "submit_failed_at",
)


def supports_endpoint(supported: Sequence[str], endpoint: str) -> bool:
    return endpoint in (supported or DEFAULT_ENDPOINTS)


def serving_name(model: dict[str, Any] | None, spec: dict[str, Any]) -> str:
    """What batch requests put in `body.model`: the model's serving name, else the source URI."""
    if model and model.get("serving_name"):
        return str(model["serving_name"])
    return str((spec.get("model_source") or {}).get("uri") or "")


def asked_replicas(request: CreateJob) -> int:
    """The machines the request asks for; 0: none said (the template's default applies)."""
    return request.resource_request.replicas if request.resource_request else 0


def check_replicas(request: CreateJob, maximum: int) -> None:
    """400 `replicas_above_maximum` past the operator's NEOBATCH_MAX_REPLICAS (AIBrix's
    schema allows up to 1,024; each machine is paid for, so the operator bounds it)."""
    asked = asked_replicas(request)
    if asked > maximum:
        raise InvalidInput(
            f"resource_request.replicas: {asked} is above the maximum of {maximum} machines "
            "per job on this installation",
            code="replicas_above_maximum",
        )


def replicas_for(request: CreateJob, spec: dict[str, Any], maximum: int) -> int:
    """The machines the job asks for: the request's, else its template's default (`spec.replicas`,
    held to the operator's maximum: the job did not ask for more), else 1."""
    asked = asked_replicas(request)
    if asked:
        return asked
    default = spec.get("replicas")
    if isinstance(default, int) and not isinstance(default, bool) and default > 0:
        return max(1, min(default, maximum))
    return 1


def build_job_doc(
    *,
    job_id: str,
    batch_id: str,
    owner: str,
    project: str,
    request: CreateJob,
    template: dict[str, Any],
    model: dict[str, Any] | None,
    report: ValidationReport,
    now: datetime,
    replicas: int = 1,
) -> dict[str, Any]:
    """The `jobs` document (CONTRACTS.md) for a request and its resolved template.

    An input file whose lines fail validation gives a job that is `failed` from the start,
    with the line-numbered `errors` OpenAI shows; nothing is ever provisioned for it.
    """
    resource = request.resource_request
    doc: dict[str, Any] = {
        "_id": job_id,
        "batch_id": batch_id,
        "status": JobStatus.QUEUED.value,
        "version": 1,
        "name": request.name,
        "created_by": owner,
        "project": project,
        "endpoint": request.endpoint,
        "input_dataset": request.input_dataset,
        "completion_window": request.completion_window,
        "completion_window_seconds": parse_completion_window(request.completion_window),
        "model_id": template["model_id"],
        "model_template_id": template["_id"],
        "model_template_name": template["name"],
        "model_template_version": template["version"],
        # Inline, so later template edits never change a job already accepted (AIBrix §1.2).
        "template_spec": template["spec"],
        "serving_name": serving_name(model, template["spec"]),
        # Machines the job asks for (`replicas_for`: the request's, else the template's, else 1).
        "resource_request": {
            "replicas": replicas,
            "provider_config": resource.provider_config if resource else None,
        },
        "provider": request.provider,
        # Only the fields the client set: the agent's defaults apply to the rest.
        "client": msgspec.to_builtins(request.client) if request.client is not None else None,
        "metadata": dict(request.metadata),
        # The job's cost cap (USD); the planner stops the job when its bill reaches it.
        "max_cost_usd": request.max_cost_usd,
        "provision_id": None,
        # What the client counted, shown until the validated count below is known.
        "request_count_total": request.request_count_total,
        "request_counts": {"total": report.total, "completed": 0, "failed": 0},
        "output_dataset": None,
        "error_dataset": None,
        "error_code": None,
        "error_message": None,
    }
    doc.update(dict.fromkeys(JOB_TIMESTAMPS))
    doc["created_at"] = now
    if report.ok:
        doc["queued_at"] = now
    else:
        doc.update(_failed_input(report, now))
    return doc


def _failed_input(report: ValidationReport, now: datetime) -> dict[str, Any]:
    """What a job whose input file failed validation holds instead of being queued."""
    return {
        "status": JobStatus.FAILED.value,
        "failed_at": now,
        "error_code": "empty_file" if report.invalid_lines == 0 else "invalid_input_file",
        "error_message": report.summary(),
        "errors": [
            {"code": e.code, "message": e.message, "param": e.param, "line": e.line}
            for e in report.errors
        ],
    }


def creation_events(job: dict[str, Any], now: datetime) -> list[Event]:
    """What a new job emits: `job.queued` when it can run, and its first status change."""
    queued = job["status"] == JobStatus.QUEUED
    events: list[Event] = [JobQueued(job_id=job["_id"], occurred_at=now)] if queued else []
    reason = "created" if queued else "invalid_input_file"
    if job.get("retry_of"):
        reason = f"{reason}: a retry of job {job['retry_of']}"
    events.append(
        JobStatusChanged(
            job_id=job["_id"],
            old_status=None,
            new_status=job["status"],
            reason=reason,
            occurred_at=now,
            job_version=int(job.get("version") or 1),
        )
    )
    return events


def cancel_events(job: dict[str, Any], scope: str | None, now: datetime) -> list[Event]:
    """What a cancel request emits: nothing on a job that already ended (a no-op, not an
    error). Any key of the job's project may ask (`scope` its project), or an operator (`scope`
    None): a job outlives the key that created it."""
    if scope is not None and job.get("project") != scope:
        raise Forbidden(f"job {job['_id']!r} belongs to another project", code="forbidden")
    if JobStatus(job["status"]).is_terminal:
        return []
    return [JobCancelRequested(job_id=job["_id"], occurred_at=now)]
