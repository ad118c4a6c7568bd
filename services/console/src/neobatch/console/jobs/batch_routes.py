"""The OpenAI Batches API (`/v1/batches`, openai-batch-api §3.2): what `client.batches.*` calls.

A batch is a job seen through the OpenAI view (batch_view.py); its id is the job's
`batch_id`. A batch created here is a job on the default deployment template, or on the
template named by `metadata["neobatch.template_name"]` (and `neobatch.template_version`),
leased from `metadata["neobatch.provider"]` when given; `aibrix.client` (AIBrix's extension,
`extra_body` in the SDK) tunes dispatch as the job API's `client` block does, and
`aibrix.replicas` asks for several machines as `resource_request.replicas` does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from neobatch.common.contracts import JobStatus
from neobatch.common.errors import Conflict
from neobatch.console.jobs.batch_view import batch_view
from neobatch.console.jobs.routes import bills
from neobatch.console.jobs.schemas import (
    BatchList,
    BatchOut,
    CreateBatch,
    CreateJob,
    ResourceRequestIn,
    max_cost,
)
from neobatch.console.jobs.service import JobService
from neobatch.console.jobs.store import JobStore
from neobatch.console.keys.auth import Caller
from neobatch.console.paging import PageLimit, page_ends

TEMPLATE_NAME_KEY = "neobatch.template_name"
TEMPLATE_VERSION_KEY = "neobatch.template_version"
PROVIDER_KEY = "neobatch.provider"
MAX_COST_KEY = "neobatch.max_cost_usd"  # the job's cost cap (checked by CreateBatch)


def job_request(data: CreateBatch) -> CreateJob:
    """A CreateBatch as the job request both APIs share."""
    metadata = dict(data.metadata or {})
    return CreateJob(
        input_dataset=data.input_file_id,
        endpoint=data.endpoint,
        completion_window=data.completion_window,
        model_template_name=metadata.get(TEMPLATE_NAME_KEY, ""),
        model_template_version=metadata.get(TEMPLATE_VERSION_KEY, ""),
        provider=metadata.get(PROVIDER_KEY),
        client=data.aibrix.client if data.aibrix else None,
        resource_request=(
            ResourceRequestIn(replicas=data.aibrix.replicas)
            if data.aibrix and data.aibrix.replicas
            else None
        ),
        metadata=metadata,
        max_cost_usd=max_cost(metadata.get(MAX_COST_KEY)),
    )


async def _billed_view(store: JobStore, job: dict[str, Any], now: datetime) -> BatchOut:
    return batch_view(job, *(await bills(store, [job], now))[0])


class BatchController(Controller):
    path = "/batches"

    @post("/", status_code=200)
    async def create_batch(
        self,
        data: JSONBody[CreateBatch],
        job_service: NamedDependency[JobService],
        now: NamedDependency[datetime],
        caller: NamedDependency[Caller],
    ) -> BatchOut:
        return batch_view(await job_service.create_job(job_request(data), caller, now))

    @get("/")
    async def list_batches(
        self,
        job_store: NamedDependency[JobStore],
        caller: NamedDependency[Caller],
        now: NamedDependency[datetime],
        limit: PageLimit = 20,
        after: FromQuery[str | None] = None,
    ) -> BatchList:
        jobs, has_more = await job_store.list_batches(caller.scope, limit, after)
        billed = await bills(job_store, jobs, now)
        data = [batch_view(job, *costs) for job, costs in zip(jobs, billed, strict=True)]
        return BatchList(data=data, has_more=has_more, **page_ends(data))

    @get("/{batch_id:str}")
    async def retrieve_batch(
        self,
        batch_id: FromPath[str],
        job_store: NamedDependency[JobStore],
        caller: NamedDependency[Caller],
        now: NamedDependency[datetime],
    ) -> BatchOut:
        return await _billed_view(job_store, await job_store.get_batch(batch_id, caller.scope), now)

    @post("/{batch_id:str}/cancel", status_code=200)
    async def cancel_batch(
        self,
        batch_id: FromPath[str],
        job_store: NamedDependency[JobStore],
        job_service: NamedDependency[JobService],
        now: NamedDependency[datetime],
        caller: NamedDependency[Caller],
    ) -> BatchOut:
        job = await job_store.get_batch(batch_id, caller.scope)
        if JobStatus(job["status"]).is_terminal:
            raise Conflict(
                f"cannot cancel batch {batch_id!r}: it is already {batch_view(job).status}",
                code="batch_not_cancellable",
            )
        return await _billed_view(
            job_store, await job_service.request_cancel(job, caller, now), now
        )
