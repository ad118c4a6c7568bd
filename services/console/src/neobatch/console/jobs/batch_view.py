"""The OpenAI view of a job: the `Batch` object of `/v1/batches`. Pure.

DESIGN "One job, two views": the batch id is the job's `batch_id`; before the runtime-agent
starts the batch reads `validating`; `resource_failed`/`submit_failed` read `failed` with an
`errors` entry saying why; every other status is the OpenAI value of the same name.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from neobatch.common.contracts import JobStatus
from neobatch.common.logs import redact_text
from neobatch.console.jobs.bill import Bill, bill_of
from neobatch.console.jobs.job_view import machines_view, request_counts, usage_view
from neobatch.console.jobs.schemas import BatchError, BatchErrors, BatchOut, MachinesOut
from neobatch.console.wire import unix_seconds_or_none

J = JobStatus
_BEFORE_AGENT = {J.QUEUED, J.RESOURCE_PREPARING, J.SUBMITTING, J.BATCH_CREATED}
_FAILED = {J.FAILED, J.RESOURCE_FAILED, J.SUBMIT_FAILED}
# Statuses whose error, if the job has one, is shown in `errors`.
_WITH_ERRORS = {*_FAILED, J.EXPIRED}


def batch_status(status: str) -> str:
    job_status = JobStatus(status)
    if job_status in _BEFORE_AGENT:
        return "validating"
    if job_status in _FAILED:
        return "failed"
    return job_status.value


def _shown_status(job: dict[str, Any]) -> str:
    # A recorded cancel request reads `cancelling` at once, as OpenAI's cancel answers.
    if job.get("cancel_requested_at") and not JobStatus(job["status"]).is_terminal:
        return "cancelling"
    return batch_status(job["status"])


def _errors(job: dict[str, Any]) -> BatchErrors | None:
    status = JobStatus(job["status"])
    if status not in _WITH_ERRORS:
        return None
    data = [
        BatchError(
            code=e.get("code"),
            message=redact_text(e.get("message") or ""),
            param=e.get("param"),
            line=e.get("line"),
        )
        for e in job.get("errors") or []
    ]
    if not data and (job.get("error_code") or status in _FAILED):
        data.append(
            BatchError(
                code=job.get("error_code") or status.value,
                message=redact_text(job.get("error_message") or f"the job ended {status.value}"),
                param=None,
                line=None,
            )
        )
    return BatchErrors(data=data) if data else None


def _expires_at(job: dict[str, Any]) -> int | None:
    if isinstance(job.get("expires_at"), datetime):
        return unix_seconds_or_none(job["expires_at"])
    created, window = job.get("created_at"), job.get("completion_window_seconds")
    if isinstance(created, datetime) and window:
        return unix_seconds_or_none(created + timedelta(seconds=int(window)))
    return None


def _failed_at(job: dict[str, Any]) -> int | None:
    if JobStatus(job["status"]) not in _FAILED:
        return None
    return unix_seconds_or_none(
        job.get("failed_at") or job.get("resource_failed_at") or job.get("submit_failed_at")
    )


def batch_view(
    job: dict[str, Any], bill: Bill | None = None, machines: MachinesOut | None = None
) -> BatchOut:
    """The OpenAI `Batch` object for a job document, its bill and machines as the extras
    `neobatch_bill` and `neobatch_machines`."""
    status = _shown_status(job)
    cancelling_at = unix_seconds_or_none(job.get("cancelling_at"))
    if status == "cancelling" and cancelling_at is None:
        cancelling_at = unix_seconds_or_none(job.get("cancel_requested_at"))
    return BatchOut(
        id=job["batch_id"],
        endpoint=job.get("endpoint") or "",
        errors=_errors(job),
        input_file_id=job.get("input_dataset") or "",
        completion_window=job.get("completion_window") or "24h",
        status=status,
        output_file_id=job.get("output_dataset"),
        error_file_id=job.get("error_dataset"),
        created_at=unix_seconds_or_none(job.get("created_at")) or 0,
        expires_at=_expires_at(job),
        failed_at=_failed_at(job),
        request_counts=request_counts(job),
        metadata=job.get("metadata") or {},
        model=job.get("serving_name") or None,
        usage=usage_view(job),
        in_progress_at=unix_seconds_or_none(job.get("in_progress_at")),
        finalizing_at=unix_seconds_or_none(job.get("finalizing_at")),
        completed_at=unix_seconds_or_none(job.get("completed_at")),
        expired_at=unix_seconds_or_none(job.get("expired_at")),
        cancelling_at=cancelling_at,
        cancelled_at=unix_seconds_or_none(job.get("cancelled_at")),
        neobatch_bill=bill if bill is not None else bill_of(job, [], None),
        neobatch_machines=machines if machines is not None else machines_view(job, []),
    )
