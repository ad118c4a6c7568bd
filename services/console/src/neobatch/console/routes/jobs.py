"""The AIBrix-style job API (aibrix-reference §1.2): create, read, list, cancel.

The console only creates jobs and records cancel requests; the planner owns every other
transition. Everything a job needs is checked before anything is written, so a rejected
request leaves no job and no event behind.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from neobatch.common.contracts import (
    TERMINAL_JOB_STATUSES,
    JobCancelRequested,
    JobQueued,
    JobStatus,
    JobStatusChanged,
)
from neobatch.common.errors import InvalidInput
from neobatch.common.ids import new_id
from neobatch.console.errors import Forbidden, InvalidFile
from neobatch.console.job_create import build_job_doc, supports_endpoint
from neobatch.console.jobs_view import job_view
from neobatch.console.schemas import CreateJob
from neobatch.console.settings import ConsoleSettings
from neobatch.console.store import ConsoleStore

View = dict[str, Any]


async def _check_input_file(store: ConsoleStore, file_id: str, owner: str) -> None:
    info = await store.find_file(file_id)
    if info is None:
        raise InvalidInput(f"input_dataset: file {file_id!r} not found", code="file_not_found")
    if info.owner and info.owner != owner:
        raise Forbidden(f"input_dataset: file {file_id!r} belongs to another caller")
    if info.purpose != "batch":
        raise InvalidFile(
            f"input_dataset: file {file_id!r} has purpose {info.purpose!r}, not 'batch'"
        )


async def _resolve_template(
    store: ConsoleStore, data: CreateJob, default_template: str
) -> dict[str, Any]:
    name = data.model_template_name or default_template
    if not name:
        raise InvalidInput(
            "model_template_name is required (no default template is configured)",
            code="template_not_found",
        )
    if data.model_id and await store.find_model(data.model_id) is None:
        raise InvalidInput(f"model_id: model {data.model_id!r} not found", code="model_not_found")
    template = await store.find_template(name, data.model_template_version, data.model_id)
    if template is None:
        version = data.model_template_version or "latest active"
        scope = f" for model {data.model_id!r}" if data.model_id else ""
        raise InvalidInput(
            f"model_template_name: template {name!r} ({version}){scope} not found",
            code="template_not_found",
        )
    return template


async def _view(store: ConsoleStore, job: dict[str, Any], owner: str) -> View:
    return job_view(job, await store.find_provision(job.get("provision_id")), caller=owner)


class JobController(Controller):
    path = "/jobs"

    @post("/", status_code=200)
    async def create_job(
        self,
        data: JSONBody[CreateJob],
        store: NamedDependency[ConsoleStore],
        settings: NamedDependency[ConsoleSettings],
        now: NamedDependency[datetime],
        owner: NamedDependency[str],
    ) -> View:
        await _check_input_file(store, data.input_dataset, owner)
        template = await _resolve_template(store, data, settings.default_template)
        if not supports_endpoint(template["spec"].get("supported_endpoints") or [], data.endpoint):
            raise InvalidInput(
                f"endpoint: {data.endpoint!r} is not supported by template "
                f"{template['name']!r} {template['version']!r}",
                code="unsupported_endpoint",
            )
        model = await store.find_model(template["model_id"])

        job = build_job_doc(
            job_id=new_id("job"),
            batch_id=new_id("batch"),
            owner=owner,
            request=msgspec.to_builtins(data),
            template=template,
            model=model,
            now=now,
        )
        events = [
            JobQueued(job_id=job["_id"], occurred_at=now),
            JobStatusChanged(
                job_id=job["_id"],
                old_status=None,
                new_status=JobStatus.QUEUED.value,
                reason="created",
                occurred_at=now,
            ),
        ]
        await store.insert_job(job, events, now)
        return job_view(job, None, caller=owner)

    @get("/")
    async def list_jobs(
        self,
        store: NamedDependency[ConsoleStore],
        owner: NamedDependency[str],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        after: FromQuery[str | None] = None,
    ) -> View:
        jobs, has_more = await store.list_jobs(limit, after)
        provisions = await store.find_provisions([job.get("provision_id") for job in jobs])
        views = [
            job_view(job, provisions.get(job.get("provision_id") or ""), caller=owner)
            for job in jobs
        ]
        return {"jobs": views, "has_more": has_more}

    @get("/{job_id:str}")
    async def get_job(
        self,
        job_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        owner: NamedDependency[str],
    ) -> View:
        return await _view(store, await store.get_job(job_id), owner)

    @post("/{job_id:str}/cancel", status_code=200)
    async def cancel_job(
        self,
        job_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        now: NamedDependency[datetime],
        owner: NamedDependency[str],
    ) -> View:
        job = await store.get_job(job_id)
        if job.get("created_by") and job["created_by"] != owner:
            raise Forbidden(f"only the owner of job {job_id!r} can cancel it")
        if job["status"] in TERMINAL_JOB_STATUSES:
            return await _view(store, job, owner)

        # Recorded once; a repeated cancel or a job that just ended changes nothing.
        if await store.save_cancel_request(
            job_id, [JobCancelRequested(job_id=job_id, occurred_at=now)], now
        ):
            job = await store.get_job(job_id)
        return await _view(store, job, owner)
