"""The OpenAI Batches API (`/v1/batches`, openai-batch-api §3.2): what `client.batches.*` calls.

A batch is a job seen through the OpenAI view (openai_view.py); its id is the job's
`batch_id`. A batch created here is a job on the default deployment template, or on the
template named by `metadata["neobatch.template_name"]` (and `neobatch.template_version`),
leased from `metadata["neobatch.provider"]` when given; `aibrix.client` (AIBrix's extension,
`extra_body` in the SDK) tunes dispatch as the job API's `client` block does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from neobatch.common.errors import Conflict
from neobatch.console import job_service
from neobatch.console.auth import Caller, rate_limited
from neobatch.console.openai_view import batch_view, is_terminal
from neobatch.console.schemas import CreateBatch
from neobatch.console.settings import ConsoleSettings
from neobatch.console.store import ConsoleStore

View = dict[str, Any]
TEMPLATE_NAME_KEY = "neobatch.template_name"
TEMPLATE_VERSION_KEY = "neobatch.template_version"
PROVIDER_KEY = "neobatch.provider"


def job_request(data: CreateBatch) -> dict[str, Any]:
    """A CreateBatch as the job request both APIs share."""
    metadata = dict(data.metadata or {})
    return {
        "input_dataset": data.input_file_id,
        "endpoint": data.endpoint,
        "completion_window": data.completion_window,
        "name": "",
        "model_id": "",
        "model_template_name": metadata.get(TEMPLATE_NAME_KEY, ""),
        "model_template_version": metadata.get(TEMPLATE_VERSION_KEY, ""),
        "provider": metadata.get(PROVIDER_KEY),
        "resource_request": None,
        "client": msgspec.to_builtins(data.aibrix.client)
        if data.aibrix and data.aibrix.client
        else None,
        "metadata": metadata,
    }


class BatchController(Controller):
    path = "/batches"

    @post("/", status_code=200, guards=[rate_limited])
    async def create_batch(
        self,
        data: JSONBody[CreateBatch],
        store: NamedDependency[ConsoleStore],
        settings: NamedDependency[ConsoleSettings],
        now: NamedDependency[datetime],
        caller: NamedDependency[Caller],
    ) -> View:
        job = await job_service.create_job(
            store, job_request(data), caller, now, settings.default_template
        )
        return batch_view(job)

    @get("/")
    async def list_batches(
        self,
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        after: FromQuery[str | None] = None,
    ) -> View:
        jobs, has_more = await store.list_jobs(caller.project, limit, after, by="batch_id")
        data = [batch_view(job) for job in jobs]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }

    @get("/{batch_id:str}")
    async def retrieve_batch(
        self,
        batch_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        caller: NamedDependency[Caller],
    ) -> View:
        return batch_view(await store.get_job(batch_id, caller.project, by="batch_id"))

    @post("/{batch_id:str}/cancel", status_code=200)
    async def cancel_batch(
        self,
        batch_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        now: NamedDependency[datetime],
        caller: NamedDependency[Caller],
    ) -> View:
        job = await store.get_job(batch_id, caller.project, by="batch_id")
        if is_terminal(job["status"]):
            status = batch_view(job)["status"]
            raise Conflict(
                f"cannot cancel batch {batch_id!r}: it is already {status}",
                code="batch_not_cancellable",
            )
        return batch_view(await job_service.request_cancel(store, job, caller, now))
