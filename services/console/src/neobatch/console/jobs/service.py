"""Creating and cancelling jobs, shared by the AIBrix (`/api/v1/jobs`) and OpenAI
(`/v1/batches`) routes: load what the rules need, apply them, save.

Everything a job needs is checked before anything is written, so a rejected request leaves
no job and no event behind. The input file's lines are validated here, streaming, so a broken
file gives a `failed` job at once (OpenAI shows it as a failed batch with line-numbered
errors) and nothing is provisioned for it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from neobatch.common.batch_input import MAX_LINE_BYTES, InputValidator, ValidationReport
from neobatch.common.errors import InvalidInput
from neobatch.common.ids import new_id
from neobatch.console.catalog.store import CatalogStore
from neobatch.console.errors import Unprocessable
from neobatch.console.files.store import FileStore
from neobatch.console.jobs import rules
from neobatch.console.jobs.schemas import CreateJob
from neobatch.console.jobs.store import JobStore
from neobatch.console.jobs.window import check_minimum_window, parse_completion_window
from neobatch.console.keys.auth import Caller

Document = dict[str, Any]


class JobService:
    """What both job APIs do to jobs; routes translate their bodies and views around it."""

    def __init__(
        self,
        jobs: JobStore,
        files: FileStore,
        catalog: CatalogStore,
        *,
        default_template: str,
        min_window_seconds: int = 60,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self._jobs = jobs
        self._files = files
        self._catalog = catalog
        # Template used when a request names none (DEFAULT_BATCH_MODEL_DEPLOYMENT_TEMPLATE).
        self._default_template = default_template
        self._min_window_seconds = min_window_seconds
        self._max_line_bytes = max_line_bytes

    async def create_job(self, request: CreateJob, caller: Caller, now: datetime) -> Document:
        """Validate `request`, store the job with its events, return the stored document."""
        window = request.completion_window
        try:
            check_minimum_window(parse_completion_window(window), self._min_window_seconds, window)
        except ValueError as error:
            raise InvalidInput(str(error)) from None
        await _check_input_file(self._files, request.input_dataset, caller)
        template = await _resolve_template(self._catalog, request, self._default_template)
        endpoint = request.endpoint
        supported = template["spec"].get("supported_endpoints") or []
        if not rules.supports_endpoint(supported, endpoint):
            raise Unprocessable(
                f"endpoint: {endpoint!r} is not supported by template "
                f"{template['name']!r} {template['version']!r}",
                code="unsupported_endpoint",
            )
        job = rules.build_job_doc(
            job_id=new_id("job"),
            batch_id=new_id("batch"),
            owner=caller.owner,
            project=caller.project,
            request=request,
            template=template,
            model=await self._catalog.find_model(template["model_id"]),
            report=await _validate_lines(
                self._files, request.input_dataset, endpoint, self._max_line_bytes
            ),
            now=now,
        )
        await self._jobs.insert_job(job, rules.creation_events(job, now), now)
        return job

    async def request_cancel(self, job: Document, caller: Caller, now: datetime) -> Document:
        """Record a cancel request (owner only; no-op on a terminal job); returns the job as
        stored."""
        events = rules.cancel_events(job, caller.owner, now)
        # Recorded once; a repeated cancel or a job that just ended changes nothing.
        if events and await self._jobs.save_cancel_request(job["_id"], events, now):
            return await self._jobs.get_job(job["_id"], caller.project)
        return job


async def _check_input_file(files: FileStore, file_id: str, caller: Caller) -> None:
    # Another project's file reads as missing: its existence is not the caller's business.
    info = await files.find_file(file_id, caller.project)
    if info is None:
        raise InvalidInput(f"input_dataset: file {file_id!r} not found", code="file_not_found")
    if info.purpose != "batch":
        raise Unprocessable(
            f"input_dataset: file {file_id!r} has purpose {info.purpose!r}, not 'batch'",
            code="invalid_file_purpose",
        )


async def _resolve_template(catalog: CatalogStore, request: CreateJob, default: str) -> Document:
    name = request.model_template_name or default
    version = request.model_template_version
    model_id = request.model_id
    if not name:
        raise InvalidInput(
            "model_template_name is required (no default template is configured)",
            code="template_not_found",
        )
    if model_id and await catalog.find_model(model_id) is None:
        raise InvalidInput(f"model_id: model {model_id!r} not found", code="model_not_found")
    template = await catalog.find_template(name, version, model_id)
    if template is None:
        scope = f" for model {model_id!r}" if model_id else ""
        raise InvalidInput(
            f"model_template_name: template {name!r} ({version or 'latest active'}){scope} "
            "not found",
            code="template_not_found",
        )
    return template


async def _validate_lines(
    files: FileStore, file_id: str, endpoint: str, max_line_bytes: int
) -> ValidationReport:
    """Stream the file once; the work per line is bounded (`batch_input`), whatever it holds."""
    validator = InputValidator(endpoint, max_line_bytes=max_line_bytes)
    index = 0
    async for raw in files.iter_lines(file_id, max_line_bytes):
        validator.feed(index, raw)
        index += 1
    return validator.report()
