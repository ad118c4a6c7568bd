"""The AIBrix-style job API (aibrix-reference §1.2): create, read, list, cancel, capabilities.

The console only creates jobs and records cancel requests; the planner owns every other
transition. Jobs are scoped to the caller's project: another project's job answers 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from neobatch.console import job_service
from neobatch.console.auth import Caller, rate_limited
from neobatch.console.jobs_view import job_view
from neobatch.console.schemas import CreateJob
from neobatch.console.settings import ConsoleSettings
from neobatch.console.store import ConsoleStore

View = dict[str, Any]
MAX_REPLICAS = 1024


async def _view(store: ConsoleStore, job: dict[str, Any], caller: Caller) -> View:
    return job_view(job, await store.find_provision(job.get("provision_id")), caller=caller.owner)


class JobController(Controller):
    path = "/jobs"

    @post("/", status_code=200, guards=[rate_limited])
    async def create_job(
        self,
        data: JSONBody[CreateJob],
        store: NamedDependency[ConsoleStore],
        settings: NamedDependency[ConsoleSettings],
        now: NamedDependency[datetime],
        caller: NamedDependency[Caller],
    ) -> View:
        job = await job_service.create_job(
            store, msgspec.to_builtins(data), caller, now, settings.default_template
        )
        return job_view(job, None, caller=caller.owner)

    @get("/")
    async def list_jobs(
        self,
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        after: FromQuery[str | None] = None,
    ) -> View:
        jobs, has_more = await store.list_jobs(caller.project, limit, after)
        provisions = await store.find_provisions([job.get("provision_id") for job in jobs])
        views = [
            job_view(job, provisions.get(job.get("provision_id") or ""), caller=caller.owner)
            for job in jobs
        ]
        return {
            "jobs": views,
            "has_more": has_more,
            "first_id": views[0]["id"] if views else None,
            "last_id": views[-1]["id"] if views else None,
        }

    @get("/{job_id:str}")
    async def get_job(
        self,
        job_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
    ) -> View:
        return await _view(store, await store.get_job(job_id, caller.project), caller)

    @post("/{job_id:str}/cancel", status_code=200)
    async def cancel_job(
        self,
        job_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        now: NamedDependency[datetime],
        caller: NamedDependency[Caller],
    ) -> View:
        job = await store.get_job(job_id, caller.project)
        return await _view(store, await job_service.request_cancel(store, job, caller, now), caller)


@get("/config/job-capabilities")
async def job_capabilities(settings: NamedDependency[ConsoleSettings]) -> View:
    """What the UI needs to build a job form (aibrix-reference §1.2)."""
    return {
        "resource_request": {"min_replicas": 1, "max_replicas": MAX_REPLICAS},
        "provider": settings.provisioner,
    }
