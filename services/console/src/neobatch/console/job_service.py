"""Creating and cancelling jobs, shared by the AIBrix (`/api/v1/jobs`) and OpenAI
(`/v1/batches`) routes.

Everything a job needs is checked before anything is written, so a rejected request leaves
no job and no event behind. The input file's lines are validated here, streaming, so a broken
file gives a `failed` job at once (OpenAI shows it as a failed batch with line-numbered
errors) and nothing is provisioned for it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from neobatch.common.batch_input import InputValidator
from neobatch.common.contracts import (
    TERMINAL_JOB_STATUSES,
    Event,
    JobCancelRequested,
    JobQueued,
    JobStatusChanged,
)
from neobatch.common.errors import InvalidInput
from neobatch.common.ids import new_id
from neobatch.console.auth import Caller
from neobatch.console.errors import Forbidden, Unprocessable
from neobatch.console.job_create import build_job_doc, supports_endpoint
from neobatch.console.store import ConsoleStore

Document = dict[str, Any]


async def _check_input_file(store: ConsoleStore, file_id: str, caller: Caller) -> None:
    # Another project's file reads as missing: its existence is not the caller's business.
    info = await store.find_file(file_id, caller.project)
    if info is None:
        raise InvalidInput(f"input_dataset: file {file_id!r} not found", code="file_not_found")
    if info.purpose != "batch":
        raise Unprocessable(
            f"input_dataset: file {file_id!r} has purpose {info.purpose!r}, not 'batch'",
            code="invalid_file_purpose",
        )


async def _resolve_template(store: ConsoleStore, request: Document, default: str) -> Document:
    name = request.get("model_template_name") or default
    version = request.get("model_template_version") or ""
    model_id = request.get("model_id") or ""
    if not name:
        raise InvalidInput(
            "model_template_name is required (no default template is configured)",
            code="template_not_found",
        )
    if model_id and await store.find_model(model_id) is None:
        raise InvalidInput(f"model_id: model {model_id!r} not found", code="model_not_found")
    template = await store.find_template(name, version, model_id)
    if template is None:
        scope = f" for model {model_id!r}" if model_id else ""
        raise InvalidInput(
            f"model_template_name: template {name!r} ({version or 'latest active'}){scope} "
            "not found",
            code="template_not_found",
        )
    return template


async def create_job(
    store: ConsoleStore, request: Document, caller: Caller, now: datetime, default_template: str
) -> Document:
    """Validate `request` (CreateJob as builtins), store the job with its events, return it."""
    await _check_input_file(store, request["input_dataset"], caller)
    template = await _resolve_template(store, request, default_template)
    endpoint = request["endpoint"]
    if not supports_endpoint(template["spec"].get("supported_endpoints") or [], endpoint):
        raise Unprocessable(
            f"endpoint: {endpoint!r} is not supported by template "
            f"{template['name']!r} {template['version']!r}",
            code="unsupported_endpoint",
        )
    model = await store.find_model(template["model_id"])

    validator = InputValidator(endpoint)
    index = 0
    async for raw in store.iter_lines(request["input_dataset"]):
        validator.feed(index, raw)
        index += 1
    report = validator.report()

    job = build_job_doc(
        job_id=new_id("job"),
        batch_id=new_id("batch"),
        owner=caller.owner,
        project=caller.project,
        request=request,
        template=template,
        model=model,
        report=report,
        now=now,
    )
    events: list[Event] = []
    if report.ok:
        events.append(JobQueued(job_id=job["_id"], occurred_at=now))
    events.append(
        JobStatusChanged(
            job_id=job["_id"],
            old_status=None,
            new_status=job["status"],
            reason="created" if report.ok else "invalid_input_file",
            occurred_at=now,
        )
    )
    await store.insert_job(job, events, now)
    return job


async def request_cancel(
    store: ConsoleStore, job: Document, caller: Caller, now: datetime
) -> Document:
    """Record a cancel request (owner only; no-op on a terminal job); returns the job as stored."""
    job_id = job["_id"]
    if job.get("created_by") and job["created_by"] != caller.owner:
        raise Forbidden(f"only the owner of job {job_id!r} can cancel it")
    if job["status"] in TERMINAL_JOB_STATUSES:
        return job
    # Recorded once; a repeated cancel or a job that just ended changes nothing.
    if await store.save_cancel_request(
        job_id, [JobCancelRequested(job_id=job_id, occurred_at=now)], now
    ):
        job = await store.get_job(job_id, caller.project)
    return job
