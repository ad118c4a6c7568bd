"""Fairness between projects (issue 13, finding 7 and 9): quotas, the rate limit on every
route, bounded pages with project-scoped cursors, one query per file page, known providers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from litestar.testing import AsyncTestClient
from pymongo import AsyncMongoClient, monitoring

from neobatch.common import runtime as runtime_module
from neobatch.console.app import create_app
from neobatch.console.keys.cli import run
from neobatch.sim.testing.waiting import wait_until

CHAT = "/v1/chat/completions"


async def make_key(project: str, monkeypatch: pytest.MonkeyPatch, api: Any) -> dict[str, str]:
    monkeypatch.setenv("MONGO_URL", api.settings.common.mongo_url)
    monkeypatch.setenv("NEOBATCH_DB", api.db.name)
    out = io.StringIO()
    assert await run(["create", "--project", project, "--name", f"{project} key"], out) == 0
    api_key = re.search(r"api_key=(\S+)", out.getvalue())[1]  # type: ignore[index]
    return {"Authorization": f"Bearer {api_key}"}


# --- the rate limit covers every route ----------------------------------------------------


async def test_reads_past_the_rate_limit_are_429_too(api: Any) -> None:
    """docs/configuration.md: "requests per minute per API key" — reads were never limited."""
    settings = msgspec.structs.replace(api.settings, rate_limit_per_minute=3)
    async with AsyncTestClient(app=create_app(settings)) as client:
        codes = [
            (await client.get("/api/v1/models", headers=api.auth)).status_code for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        r = await client.get("/v1/batches", headers=api.auth)
        assert r.status_code == 429
        assert r.json()["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        # Per key: health checks carry no key and are not limited.
        assert (await client.get("/healthz")).status_code == 200


# --- quotas ----------------------------------------------------------------------------------


async def test_queued_jobs_past_the_project_quota_are_429(api: Any) -> None:
    settings = msgspec.structs.replace(api.settings, max_queued_jobs_per_project=2)
    async with AsyncTestClient(app=create_app(settings)) as client:
        api.client = client
        await api.ready_template()
        body = await api.job_request()
        codes = [(await api.post("/api/v1/jobs", body)).status_code for _ in range(2)]
        r = await api.post("/api/v1/jobs", body)
        assert codes == [200, 200] and r.status_code == 429, r.text
        assert r.json()["code"] == "quota_exceeded" and int(r.headers["retry-after"]) >= 1
        assert "2 queued jobs" in r.json()["message"]
        batch = {
            "input_file_id": body["input_dataset"],
            "endpoint": CHAT,
            "metadata": {"neobatch.template_name": api.template_name},
        }
        r = await api.post("/v1/batches", batch)
        assert r.status_code == 429 and r.json()["code"] == "quota_exceeded"
        assert await api.count("jobs") == 2
        # A job that leaves the queue frees room.
        await api.db.jobs.update_one({"status": "queued"}, {"$set": {"status": "in_progress"}})
        assert (await api.post("/api/v1/jobs", body)).status_code == 200


async def test_an_operator_override_raises_one_projects_queued_quota(api: Any) -> None:
    settings = msgspec.structs.replace(api.settings, max_queued_jobs_per_project=1)
    async with AsyncTestClient(app=create_app(settings)) as client:
        api.client = client
        await api.ready_template()
        body = await api.job_request()
        await api.db.project_quotas.insert_one({"_id": "default", "max_queued_jobs": 2})
        codes = [(await api.post("/api/v1/jobs", body)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """`app` behind a real HTTP server on this event loop: requests run concurrently, which
    the Litestar test client (one request at a time, on its own thread) never does."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await wait_until(lambda: server.started, 20, message="console serving")
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            await task


async def test_concurrent_creates_never_pass_the_queued_jobs_quota(api: Any) -> None:
    """The quota was a read before the insert: creates racing at the limit all passed it.
    Eight at once against a quota of 3, on both job APIs: exactly 3 are accepted."""
    await api.ready_template()
    body = await api.job_request()
    batch = {
        "input_file_id": body["input_dataset"],
        "endpoint": CHAT,
        "metadata": {"neobatch.template_name": api.template_name},
    }
    settings = msgspec.structs.replace(api.settings, max_queued_jobs_per_project=3)
    async with (
        served(create_app(settings)) as url,
        httpx.AsyncClient(base_url=url, headers=api.auth, timeout=60) as client,
    ):
        responses = await asyncio.gather(
            *(client.post("/api/v1/jobs", json=body) for _ in range(4)),
            *(client.post("/v1/batches", json=batch) for _ in range(4)),
        )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [429] * 5, codes
    assert {r.json()["code"] for r in responses if r.status_code == 429} == {"quota_exceeded"}
    assert await api.count("jobs", {"status": "queued"}) == 3
    assert await api.count("jobs") == 3


# --- unknown providers are refused at create -------------------------------------------------


async def test_an_unknown_provider_is_refused_at_create(api: Any) -> None:
    await api.ready_template()
    body = await api.job_request(provider="runpod")  # PROVISIONER is "ssh" here
    r = await api.post("/api/v1/jobs", body)
    assert r.status_code == 400 and r.json()["code"] == "unknown_provider", r.text
    assert "ssh" in r.json()["message"]
    batch = {
        "input_file_id": body["input_dataset"],
        "endpoint": CHAT,
        "metadata": {"neobatch.template_name": api.template_name, "neobatch.provider": "nosuch"},
    }
    r = await api.post("/v1/batches", batch)
    assert r.status_code == 400 and r.json()["code"] == "unknown_provider", r.text
    assert await api.count("jobs") == 0
    # A configured one is accepted.
    assert (
        await api.post("/api/v1/jobs", await api.job_request(provider="ssh"))
    ).status_code == 200


# --- lists -----------------------------------------------------------------------------------


async def test_model_and_template_lists_are_bounded_pages(api: Any) -> None:
    for n in range(25):
        r = await api.post_operator("/api/v1/models", {"name": f"model {n:02d}"})
        assert r.status_code == 200
    first = (await api.get("/api/v1/models")).json()
    assert len(first["data"]) == 20 and first["has_more"] is True
    second = (await api.get("/api/v1/models", params={"after": first["last_id"]})).json()
    assert len(second["data"]) == 5 and second["has_more"] is False
    names = [m["name"] for m in first["data"] + second["data"]]
    assert sorted(names) == [f"model {n:02d}" for n in range(25)]
    assert names == sorted(names, reverse=True)  # newest first, no row twice
    assert (await api.get("/api/v1/models", params={"limit": 101})).status_code == 400

    await api.ready_template()
    for n in range(3):
        body = api.template_body(version=f"v2.0.{n}")
        r = await api.post_operator(f"/api/v1/models/{api.model_id}/deployment-templates", body)
        assert r.status_code == 200
    path = f"/api/v1/models/{api.model_id}/deployment-templates"
    page = (await api.get(path, params={"limit": 2})).json()
    assert len(page["data"]) == 2 and page["has_more"] is True
    rest = (await api.get(path, params={"limit": 2, "after": page["last_id"]})).json()
    assert len(rest["data"]) == 2 and rest["has_more"] is False
    assert {t["id"] for t in page["data"]}.isdisjoint(t["id"] for t in rest["data"])


async def test_a_foreign_file_cursor_reads_as_an_unknown_one(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `after` cursor told whether another project's file id exists."""
    mine = [await api.uploaded_file() for _ in range(2)]
    other = await make_key("beta", monkeypatch, api)
    r = await api.client.post(
        "/v1/files",
        headers=other,
        data={"purpose": "batch"},
        files={"file": ("b.jsonl", api.sample_jsonl)},
    )
    foreign = r.json()["id"]
    mine.append(await api.uploaded_file())

    page = (await api.get("/v1/files", params={"limit": 2})).json()
    assert [f["id"] for f in page["data"]] == [mine[2], mine[1]] and page["has_more"]
    rest = (await api.get("/v1/files", params={"limit": 2, "after": page["last_id"]})).json()
    assert [f["id"] for f in rest["data"]] == [mine[0]] and not rest["has_more"]

    unknown = await api.get("/v1/files", params={"after": "file-doesnotexist"})
    via_foreign = await api.get("/v1/files", params={"after": foreign})
    assert via_foreign.status_code == unknown.status_code
    assert via_foreign.json() == unknown.json()
    # The same on the AIBrix surface and in ascending order.
    for path in ("/api/v1/files", "/v1/files"):
        a = await api.get(path, params={"after": foreign, "order": "asc"})
        b = await api.get(path, params={"after": "file-doesnotexist", "order": "asc"})
        assert (a.status_code, a.json()) == (b.status_code, b.json())


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[tuple[str, str]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        collection = event.command.get(event.command_name)
        self.names.append((event.command_name, collection if isinstance(collection, str) else ""))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_file_page_costs_the_same_queries_for_any_number_of_files(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """671 files took 1.84 s: one extra query per file."""
    commands = Commands()
    monkeypatch.setattr(
        runtime_module,
        "create_mongo_client",
        lambda url: _listened(url, commands),
    )
    async with AsyncTestClient(app=create_app(api.settings)) as client:
        api.client = client

        async def queries_for_a_page() -> list[tuple[str, str]]:
            commands.names.clear()
            r = await client.get("/v1/files", headers=api.auth)
            assert r.status_code == 200
            return [c for c in commands.names if c[0] in ("find", "aggregate")]

        await api.uploaded_file()
        one = await queries_for_a_page()
        for _ in range(11):
            await api.uploaded_file()
        twelve = await queries_for_a_page()
        assert len((await client.get("/v1/files", headers=api.auth)).json()["data"]) == 12
        assert len(twelve) == len(one)
        assert twelve.count(("find", "files.files")) == 1


def _listened(url: str, listener: monitoring.CommandListener) -> AsyncMongoClient[Any]:
    return AsyncMongoClient(
        url, tz_aware=True, serverSelectionTimeoutMS=10_000, event_listeners=[listener]
    )
