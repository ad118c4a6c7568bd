"""The OpenAI surface (/v1) in process, and every error path's status and {code, message}."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from neobatch.common.contracts import JobQueued, JobStatusChanged
from neobatch.common.outbox import OUTBOX
from neobatch.console.app import create_app
from neobatch.console.jobs.batch_view import batch_status, batch_view
from neobatch.console.jobs.job_view import job_view

CHAT = "/v1/chat/completions"


async def upload_v1(api: Any, content: bytes, filename: str = "in.jsonl") -> dict[str, Any]:
    r = await api.client.post(
        "/v1/files",
        headers=api.auth,
        data={"purpose": "batch"},
        files={"file": (filename, content, "application/jsonl")},
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_batch_lifecycle_fields_and_list(api: Any) -> None:
    await api.ready_template()
    file = await upload_v1(api, api.sample_jsonl)
    body = {
        "input_file_id": file["id"],
        "endpoint": CHAT,
        "completion_window": "24h",
        "metadata": {"neobatch.template_name": api.template_name, "team": "a"},
    }
    r = await api.post("/v1/batches", body)
    assert r.status_code == 200, r.text
    batch = r.json()
    assert batch["id"].startswith("batch_") and batch["status"] == "validating"
    assert batch["request_counts"] == {"total": 2, "completed": 0, "failed": 0}
    assert batch["errors"] is None and batch["expires_at"] == batch["created_at"] + 86400
    assert batch["metadata"]["team"] == "a" and batch["usage"]["total_tokens"] == 0
    # The same job through the AIBrix view, and the AIBrix list shows it too.
    job = await api.db["jobs"].find_one({"batch_id": batch["id"]})
    assert job["project"] == "default" and job["model_template_name"] == api.template_name
    listed = (await api.get("/api/v1/jobs")).json()["jobs"]
    assert [j["batch_id"] for j in listed] == [batch["id"]]

    assert (await api.get(f"/v1/batches/{batch['id']}")).json() == batch
    page = (await api.get("/v1/batches", params={"limit": 1})).json()
    assert page["data"] == [batch] and page["has_more"] is False
    assert page["first_id"] == page["last_id"] == batch["id"]

    cancelled = await api.post(f"/v1/batches/{batch['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelling"
    assert cancelled.json()["cancelling_at"] is not None
    await api.db["jobs"].update_one({"batch_id": batch["id"]}, {"$set": {"status": "cancelled"}})
    again = await api.post(f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 409 and again.json()["code"] == "batch_not_cancellable"


async def test_aibrix_client_extension_reaches_the_job_and_bad_values_are_400(api: Any) -> None:
    await api.ready_template()
    file = await upload_v1(api, api.sample_jsonl)
    body = {
        "input_file_id": file["id"],
        "endpoint": CHAT,
        "metadata": {"neobatch.template_name": api.template_name},
        "aibrix": {"client": {"max_concurrency": 32, "request_timeout_seconds": 120}},
    }
    r = await api.post("/v1/batches", body)
    assert r.status_code == 200, r.text
    job = await api.db["jobs"].find_one({"batch_id": r.json()["id"]})
    assert job["client"] == {"max_concurrency": 32, "request_timeout_seconds": 120}

    body["aibrix"] = {"client": {"max_concurrency": 5000}}
    bad = await api.post("/v1/batches", body)
    assert bad.status_code == 400 and "aibrix.client.max_concurrency" in bad.json()["message"]


async def test_default_template_and_files_api(api: Any) -> None:
    file = await upload_v1(api, api.sample_jsonl)
    listed = (await api.get("/v1/files")).json()
    assert listed["object"] == "list" and [f["id"] for f in listed["data"]] == [file["id"]]
    assert (await api.get(f"/v1/files/{file['id']}")).json() == file
    content = await api.get(f"/v1/files/{file['id']}/content")
    assert content.content == api.sample_jsonl
    gone = await api.client.delete(f"/v1/files/{file['id']}", headers=api.auth)
    assert gone.json() == {"id": file["id"], "object": "file", "deleted": True}
    assert (await api.get(f"/v1/files/{file['id']}")).status_code == 404


async def test_invalid_lines_fail_the_batch_at_once_and_queue_nothing(api: Any) -> None:
    await api.ready_template()
    good = api.sample_jsonl.splitlines()[0]
    file = await upload_v1(api, good + b"\n\n[1]\n" + good + b"\n")
    body = {"input_file_id": file["id"], "endpoint": CHAT, "completion_window": "24h"}
    body["metadata"] = {"neobatch.template_name": api.template_name}
    batch = (await api.post("/v1/batches", body)).json()
    assert batch["status"] == "failed" and batch["failed_at"] is not None
    assert [(e["line"], e["code"]) for e in batch["errors"]["data"]] == [
        (3, "invalid_request"),
        (4, "duplicate_custom_id"),
    ]
    job = await api.db["jobs"].find_one({"batch_id": batch["id"]})
    assert job["status"] == "failed" and job["queued_at"] is None
    subjects = [e["subject"] for e in await api.db[OUTBOX].find().to_list(None)]
    assert subjects == [api.ns.subject(JobStatusChanged)]
    assert api.ns.subject(JobQueued) not in subjects


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("queued", "validating"),
        ("resource_preparing", "validating"),
        ("submitting", "validating"),
        ("batch_created", "validating"),
        ("in_progress", "in_progress"),
        ("finalizing", "finalizing"),
        ("cancelling", "cancelling"),
        ("completed", "completed"),
        ("failed", "failed"),
        ("resource_failed", "failed"),
        ("submit_failed", "failed"),
        ("expired", "expired"),
        ("cancelled", "cancelled"),
    ],
)
def test_status_mapping(status: str, expected: str) -> None:
    assert batch_status(status) == expected


def test_resource_failure_reads_failed_with_an_error_entry() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    job = {
        "batch_id": "batch_1",
        "status": "resource_failed",
        "created_at": at,
        "resource_failed_at": at,
        "error_code": "no_capacity",
        "error_message": "no machine with H100 (token sk_abcdefghijklmnopqrstu)",
    }
    view = msgspec.to_builtins(batch_view(job))
    assert view["status"] == "failed" and view["failed_at"] == int(at.timestamp())
    [error] = view["errors"]["data"]
    assert error["code"] == "no_capacity" and "sk_abcdefghijklmnop" not in error["message"]


async def test_error_paths_have_stable_codes_and_create_nothing(api: Any) -> None:
    await api.ready_template()
    file = (await upload_v1(api, api.sample_jsonl))["id"]
    ok = {"input_file_id": file, "endpoint": CHAT, "completion_window": "24h"}
    cases: list[tuple[str, str, Any, int, str]] = [
        ("post", "/v1/batches", {**ok, "completion_window": "1x"}, 400, "invalid_request"),
        ("post", "/v1/batches", {**ok, "input_file_id": "file_nope"}, 400, "file_not_found"),
        ("post", "/v1/batches", {**ok, "metadata": {"k" * 65: "v"}}, 400, "invalid_request"),
        ("post", "/v1/batches", ok, 400, "template_not_found"),  # no default configured
        (
            "post",
            "/v1/batches",
            {
                **ok,
                "endpoint": "/v1/embeddings",
                "metadata": {"neobatch.template_name": "qwen-sim"},
            },
            422,
            "unsupported_endpoint",
        ),
        ("get", "/v1/batches/batch_nope", None, 404, "batch_not_found"),
        ("post", "/v1/batches/batch_nope/cancel", None, 404, "batch_not_found"),
        ("get", "/v1/files/file_nope", None, 404, "file_not_found"),
        ("post_operator", "/api/v1/models", {"name": "Qwen2.5 7B Instruct"}, 409, "model_exists"),
        ("post", "/api/v1/models", {"name": "Other"}, 403, "operator_only"),
    ]
    for method, path, body, status, code in cases:
        r = await getattr(api, method)(path, body)
        assert (r.status_code, r.json()["code"]) == (status, code), (path, body, r.text)
        assert set(r.json()) == {"code", "message"}
    r = await api.client.get("/v1/batches", headers={"Authorization": "Bearer nope"})
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
    assert await api.count("jobs") == 0 and await api.count(OUTBOX) == 0


async def test_too_large_upload_is_413(api: Any) -> None:
    big = api.sample_jsonl * (api.settings.max_upload_bytes // len(api.sample_jsonl) + 1)
    r = await api.client.post(
        "/v1/files", headers=api.auth, data={"purpose": "batch"}, files={"file": ("b.jsonl", big)}
    )
    assert r.status_code == 413 and r.json()["code"] in ("file_too_large", "payload_too_large")


async def test_creates_past_the_rate_limit_are_429(api: Any) -> None:
    settings = msgspec.structs.replace(api.settings, rate_limit_per_minute=2)
    async with AsyncTestClient(app=create_app(settings)) as client:
        codes = []
        for _ in range(3):
            r = await client.post(
                "/v1/files",
                headers=api.auth,
                data={"purpose": "batch"},
                files={"file": ("a.jsonl", api.sample_jsonl)},
            )
            codes.append(r.status_code)
        assert codes == [200, 200, 429]
        assert r.json()["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        # Every request counts, reads too (docs/configuration.md: requests per minute per key).
        assert (await client.get("/v1/files", headers=api.auth)).status_code == 429


def test_cached_tokens_show_on_the_batch_and_the_job_as_openai_nests_them() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    job = {
        "_id": "job_1",
        "batch_id": "batch_1",
        "status": "completed",
        "created_at": at,
        "usage": {
            "input_tokens": 900,
            "output_tokens": 96,
            "total_tokens": 996,
            "cached_tokens": 512,
        },
    }
    expected = {
        "input_tokens": 900,
        "input_tokens_details": {"cached_tokens": 512},
        "output_tokens": 96,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 996,
    }
    assert msgspec.to_builtins(batch_view(job))["usage"] == expected
    assert msgspec.to_builtins(job_view(job, None, caller="key:a"))["usage"] == expected
    # A job stored before cached tokens were counted reads 0.
    del job["usage"]["cached_tokens"]
    assert batch_view(job).usage.input_tokens_details.cached_tokens == 0
