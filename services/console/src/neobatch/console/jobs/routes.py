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
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody

from neobatch.console.jobs.bill import Bill, bill_of
from neobatch.console.jobs.job_view import job_view, machines_view
from neobatch.console.jobs.quote import Quote
from neobatch.console.jobs.retry import RetryService
from neobatch.console.jobs.schemas import (
    CreateJob,
    JobCapabilities,
    JobEventList,
    JobList,
    JobOut,
    MachinesOut,
    ReplicaRange,
    RetryJob,
    StatusFilter,
)
from neobatch.console.jobs.service import JobService
from neobatch.console.jobs.store import JobStore
from neobatch.console.keys.auth import Caller
from neobatch.console.paging import PageLimit, page_ends
from neobatch.console.settings import ConsoleSettings

# An Idempotency-Key: printable ASCII (a UUID, a client's request id).
IDEMPOTENCY_KEY_LENGTH = 128
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"


async def job_views(
    store: JobStore, jobs: list[dict[str, Any]], caller: Caller, now: datetime
) -> list[JobOut]:
    """The views of a page of jobs, each with its provision, its bill and its retries (one
    read for each, for all)."""
    ids = [job["_id"] for job in jobs]
    provisions = await store.list_job_provisions(ids)
    retries = await store.list_retry_ids(ids)
    views = []
    for job in jobs:
        own = provisions.get(job["_id"], [])
        current = next((p for p in own if p["_id"] == job.get("provision_id")), None)
        billed = bill_of(job, own, now)
        machines = machines_view(job, own)
        view = job_view(job, current, caller=caller.owner, bill=billed, machines=machines)
        views.append(msgspec.structs.replace(view, retried_by=retries.get(job["_id"], [])))
    return views


async def bills(
    store: JobStore, jobs: list[dict[str, Any]], now: datetime
) -> list[tuple[Bill, MachinesOut]]:
    """The bills and machines of a page of jobs, in order (one read of their provisions)."""
    provisions = await store.list_job_provisions([job["_id"] for job in jobs])
    return [
        (
            bill_of(job, provisions.get(job["_id"], []), now),
            machines_view(job, provisions[job["_id"]]),
        )
        for job in jobs
    ]


async def _view(jobs: JobStore, job: dict[str, Any], caller: Caller, now: datetime) -> JobOut:
    return (await job_views(jobs, [job], caller, now))[0]


class JobController(Controller):
    path = "/jobs"

    @post("/", status_code=200)
    async def create_job(
        self,
        data: JSONBody[CreateJob],
        job_service: NamedDependency[JobService],
        now: NamedDependency[datetime],
        caller: NamedDependency[Caller],
    ) -> JobOut | Quote:
        """Create a job; with `dry_run`, answer its quote instead (nothing stored or leased)."""
        if data.dry_run:
            return await job_service.quote_job(data, caller)
        job = await job_service.create_job(data, caller, now)
        return job_view(job, None, caller=caller.owner)

    @get("/")
    async def list_jobs(
        self,
        job_store: NamedDependency[JobStore],
        caller: NamedDependency[Caller],
        now: NamedDependency[datetime],
        limit: PageLimit = 20,
        after: FromQuery[str | None] = None,
        status: StatusFilter = None,
    ) -> JobList:
        """Newest first, a page at a time (`after`: the previous page's `last_id`); `status`
        (repeatable) keeps the jobs in any of those statuses."""
        statuses = sorted(set(status or ()))
        jobs, has_more = await job_store.list_jobs(caller.scope, limit, after, statuses)
        views = await job_views(job_store, jobs, caller, now)
        return JobList(jobs=views, has_more=has_more, **page_ends(views))

    @get("/{job_id:str}")
    async def get_job(
        self,
        job_id: FromPath[str],
        job_store: NamedDependency[JobStore],
        caller: NamedDependency[Caller],
        now: NamedDependency[datetime],
    ) -> JobOut:
        return await _view(job_store, await job_store.get_job(job_id, caller.scope), caller, now)

    @post("/{job_id:str}/cancel", status_code=200)
    async def cancel_job(
        self,
        job_id: FromPath[str],
        job_store: NamedDependency[JobStore],
        job_service: NamedDependency[JobService],
        now: NamedDependency[datetime],
        caller: NamedDependency[Caller],
    ) -> JobOut:
        job = await job_store.get_job(job_id, caller.scope)
        job = await job_service.request_cancel(job, caller, now)
        return await _view(job_store, job, caller, now)

    @post("/{job_id:str}/retry", status_code=200)
    async def retry_job(
        self,
        job_id: FromPath[str],
        job_store: NamedDependency[JobStore],
        retry_service: NamedDependency[RetryService],
        now: NamedDependency[datetime],
        caller: NamedDependency[Caller],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key",
                min_length=1,
                max_length=IDEMPOTENCY_KEY_LENGTH,
                pattern=IDEMPOTENCY_KEY_PATTERN,
                description="The same key again answers the job it made (nothing new)",
            ),
        ] = None,
        data: JSONBody[RetryJob | None] = None,
    ) -> JobOut:
        """A new job re-running the job's failed and unfinished lines (issue 18): its input
        holds exactly those lines of the original input, in their order; it keeps the
        original's template, provider, replicas, window, metadata, client and cap unless the
        body overrides `model_template`, `replicas` or `max_cost_usd`. While a retry of the
        job runs, asking again (the same way) answers that one."""
        job = await retry_service.retry(job_id, data, caller, now, idempotency_key)
        return await _view(job_store, job, caller, now)


@get("/config/job-capabilities")
async def job_capabilities(settings: NamedDependency[ConsoleSettings]) -> JobCapabilities:
    """What the UI needs to build a job form (aibrix-reference §1.2)."""
    return JobCapabilities(
        resource_request=ReplicaRange(min_replicas=1, max_replicas=settings.max_replicas),
        provider=settings.provisioner,
    )


@get("/jobs/{job_id:str}/events")
async def job_events(
    job_id: FromPath[str],
    job_store: NamedDependency[JobStore],
    caller: NamedDependency[Caller],
    now: NamedDependency[datetime],
) -> JobEventList:
    """The job's timeline, oldest first: the `events` of its view, on their own (what the
    web console and `neobatch events` show)."""
    view = await _view(job_store, await job_store.get_job(job_id, caller.scope), caller, now)
    return JobEventList(data=view.events)
