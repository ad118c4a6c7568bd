"""OpenAI's per-batch input limits at batch creation: 50,000 requests (and 200 MB uploads)."""

from __future__ import annotations

import json
from typing import Any

from neobatch.common.batch_input import MAX_REQUESTS

CHAT = "/v1/chat/completions"


def _lines(n: int) -> bytes:
    body = {"model": "qwen-7b", "messages": [{"role": "user", "content": "hi"}]}
    return b"".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": body}).encode()
        + b"\n"
        for i in range(n)
    )


async def _create(api: Any, content: bytes) -> dict[str, Any]:
    r = await api.client.post(
        "/v1/files",
        headers=api.auth,
        data={"purpose": "batch"},
        files={"file": ("in.jsonl", content, "application/jsonl")},
    )
    assert r.status_code == 200, r.text
    body = {"input_file_id": r.json()["id"], "endpoint": CHAT, "completion_window": "24h"}
    body["metadata"] = {"neobatch.template_name": api.template_name}
    r = await api.post("/v1/batches", body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_batch_of_50001_requests_fails_naming_the_line(api: Any) -> None:
    await api.ready_template()
    batch = await _create(api, _lines(MAX_REQUESTS + 1))
    assert batch["status"] == "failed"
    [error] = batch["errors"]["data"]
    assert (error["code"], error["line"]) == ("too_many_requests", MAX_REQUESTS + 1)
    assert "50,000" in error["message"]
    job = await api.db["jobs"].find_one({"batch_id": batch["id"]})
    assert job["status"] == "failed" and job["queued_at"] is None


async def test_a_batch_of_exactly_50000_requests_is_accepted(api: Any) -> None:
    await api.ready_template()
    batch = await _create(api, _lines(MAX_REQUESTS))
    assert batch["status"] == "validating", batch.get("errors")
    assert batch["request_counts"]["total"] == MAX_REQUESTS
