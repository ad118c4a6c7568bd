"""The batch limits are the operator's (issue 15: batches larger than OpenAI's): here
lowered, so the test stays small; the defaults are OpenAI's (test_console_batch_limits.py)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from neobatch.console.settings import ConsoleSettings

CHAT = "/v1/chat/completions"


@pytest.fixture
def console_settings(console_settings: ConsoleSettings) -> ConsoleSettings:
    common = msgspec.structs.replace(
        console_settings.common, max_batch_requests=5, max_batch_input_bytes=1024
    )
    return msgspec.structs.replace(console_settings, common=common)


def _lines(n: int, content: str = "hi") -> bytes:
    body = {"model": "qwen-7b", "messages": [{"role": "user", "content": content}]}
    return b"".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": body}).encode()
        + b"\n"
        for i in range(n)
    )


async def _create(api: Any, content: bytes) -> dict[str, Any]:
    file_id = await api.uploaded_file(content)
    body = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
    body["metadata"] = {"neobatch.template_name": api.template_name}
    r = await api.post("/v1/batches", body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_the_operator_sets_the_request_and_byte_limits(api: Any) -> None:
    await api.ready_template()
    batch = await _create(api, _lines(6))
    [error] = batch["errors"]["data"]
    assert (error["code"], error["line"]) == ("too_many_requests", 6)
    assert "more than 5 requests" in error["message"]
    batch = await _create(api, _lines(3, "x" * 400))
    [error] = batch["errors"]["data"]
    assert (error["code"], error["line"]) == ("file_too_large", 2)  # ~550 bytes a line
    batch = await _create(api, _lines(5))
    assert batch["status"] == "validating", batch.get("errors")
    assert batch["request_counts"]["total"] == 5
