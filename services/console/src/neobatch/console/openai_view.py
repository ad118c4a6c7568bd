"""The OpenAI view of a job: the `Batch` object of `/v1/batches`. Pure.

DESIGN "One job, two views": the batch id is the job's `batch_id`; before the runtime-agent
starts the batch reads `validating`; `resource_failed`/`submit_failed` read `failed` with an
`errors` entry saying why; every other status is the OpenAI value of the same name.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from neobatch.common.contracts import TERMINAL_JOB_STATUSES, JobStatus
from neobatch.common.logs import redact_text
from neobatch.console.jobs_view import unix_seconds

J = JobStatus
_BEFORE_AGENT = {J.QUEUED, J.RESOURCE_PREPARING, J.SUBMITTING, J.BATCH_CREATED}
_FAILED = {J.FAILED, J.RESOURCE_FAILED, J.SUBMIT_FAILED}
# Statuses whose error, if the job has one, is shown in `errors`.
_WITH_ERRORS = {*_FAILED, J.EXPIRED}
_TIMESTAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def batch_status(status: str) -> str:
    job_status = JobStatus(status)
    if job_status in _BEFORE_AGENT:
        return "validating"
    if job_status in _FAILED:
        return "failed"
    return job_status.value


def _shown_status(job: dict[str, Any]) -> str:
    # A recorded cancel request reads `cancelling` at once, as OpenAI's cancel answers.
    if job.get("cancel_requested_at") and not is_terminal(job["status"]):
        return "cancelling"
    return batch_status(job["status"])


def is_terminal(status: str) -> bool:
    return JobStatus(status) in TERMINAL_JOB_STATUSES


def _errors(job: dict[str, Any]) -> dict[str, Any] | None:
    status = JobStatus(job["status"])
    if status not in _WITH_ERRORS:
        return None
    data = [
        {
            "code": e.get("code"),
            "message": redact_text(e.get("message") or ""),
            "param": e.get("param"),
            "line": e.get("line"),
        }
        for e in job.get("errors") or []
    ]
    if not data and (job.get("error_code") or status in _FAILED):
        data.append(
            {
                "code": job.get("error_code") or status.value,
                "message": redact_text(job.get("error_message") or f"the job ended {status.value}"),
                "param": None,
                "line": None,
            }
        )
    return {"object": "list", "data": data} if data else None


def _expires_at(job: dict[str, Any]) -> int | None:
    if isinstance(job.get("expires_at"), datetime):
        return unix_seconds(job["expires_at"])
    created, window = job.get("created_at"), job.get("completion_window_seconds")
    if isinstance(created, datetime) and window:
        return unix_seconds(created + timedelta(seconds=int(window)))
    return None


def _usage(job: dict[str, Any]) -> dict[str, Any]:
    usage = job.get("usage") or {}
    return {
        "input_tokens": int(usage.get("input_tokens") or 0),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": int(usage.get("output_tokens") or 0),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total_tokens") or 0),
    }


def batch_view(job: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI `Batch` object for a job document."""
    counts = job.get("request_counts") or {}
    status = JobStatus(job["status"])
    view: dict[str, Any] = {
        "id": job["batch_id"],
        "object": "batch",
        "endpoint": job.get("endpoint") or "",
        "errors": _errors(job),
        "input_file_id": job.get("input_dataset") or "",
        "completion_window": job.get("completion_window") or "24h",
        "status": _shown_status(job),
        "output_file_id": job.get("output_dataset"),
        "error_file_id": job.get("error_dataset"),
        "created_at": unix_seconds(job.get("created_at")) or 0,
        "expires_at": _expires_at(job),
        "failed_at": unix_seconds(
            job.get("failed_at") or job.get("resource_failed_at") or job.get("submit_failed_at")
        )
        if status in _FAILED
        else None,
        "request_counts": {
            "total": int(counts.get("total") or 0),
            "completed": int(counts.get("completed") or 0),
            "failed": int(counts.get("failed") or 0),
        },
        "metadata": job.get("metadata") or {},
        "model": job.get("serving_name") or None,
        "usage": _usage(job),
    }
    for field in _TIMESTAMPS:
        view[field] = unix_seconds(job.get(field))
    if view["status"] == "cancelling" and view["cancelling_at"] is None:
        view["cancelling_at"] = unix_seconds(job.get("cancel_requested_at"))
    return view
