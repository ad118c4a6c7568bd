"""Uploads stream into the file store and come back byte-identical; non-JSONL is refused."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from neobatch.console.app import create_app
from neobatch.console.settings import ConsoleSettings


def big_jsonl(lines: int) -> bytes:
    # Several MiB, so the upload crosses Litestar's 1 MiB spool and many GridFS chunks.
    row = {"custom_id": "", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x" * 900}}
    return b"".join(
        json.dumps({**row, "custom_id": f"r{i}"}).encode() + b"\n" for i in range(lines)
    )


async def test_upload_then_download_is_byte_identical(api: Any) -> None:
    content = big_jsonl(4000)
    up = await api.upload(content, filename="batch_input.jsonl")
    assert up.status_code == 200, up.text
    info = up.json()
    assert info["id"].startswith("file_")
    assert info["object"] == "file" and info["purpose"] == "batch"
    assert info["bytes"] == len(content) and info["filename"] == "batch_input.jsonl"
    assert isinstance(info["created_at"], int)

    meta = await api.get(f"/api/v1/files/{info['id']}")
    assert meta.json() == info
    down = await api.get(f"/api/v1/files/{info['id']}/content")
    assert down.status_code == 200
    assert down.headers["content-type"].startswith("application/jsonl")
    assert down.content == content


async def test_leading_blank_lines_and_a_final_line_without_newline_are_fine(api: Any) -> None:
    content = b'\n\n  \n{"custom_id":"only"}'
    up = await api.upload(content)
    assert up.status_code == 200, up.text
    down = await api.get(f"/api/v1/files/{up.json()['id']}/content")
    assert down.content == content


@pytest.mark.parametrize(
    ("filename", "content", "problem"),
    [
        ("batch.csv", b'{"custom_id":"a"}\n', "not a .jsonl file"),
        ("batch.jsonl", b"custom_id,method\nr1,POST\n", "line 1 is not valid JSON"),
        ("batch.jsonl", b"[1, 2]\n{}\n", "line 1 is not a JSON object"),
        ("batch.jsonl", b"\n \n", "empty"),
        ("batch.jsonl", b"", "empty"),
    ],
)
async def test_non_jsonl_upload_is_rejected_and_nothing_is_stored(
    api: Any, filename: str, content: bytes, problem: str
) -> None:
    r = await api.upload(content, filename=filename)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_file"
    assert problem in r.json()["message"]
    assert await api.count("files.files") == 0
    assert await api.count("files.chunks") == 0


@pytest.mark.parametrize(
    ("extra_bytes", "status", "code"),
    [
        # Under the HTTP body limit (file limit + multipart overhead), caught while streaming.
        (1, 413, "file_too_large"),
        # Over the HTTP body limit: refused before the handler runs.
        (1024 * 1024, 413, "payload_too_large"),
    ],
)
async def test_upload_over_the_limit_is_rejected_and_nothing_is_stored(
    console_settings: ConsoleSettings,
    mongo_db: Any,
    extra_bytes: int,
    status: int,
    code: str,
) -> None:
    limit = 256 * 1024
    settings = msgspec.structs.replace(console_settings, max_upload_bytes=limit)
    content = b'{"a":1}\n' + b"x" * (limit - 8 + extra_bytes)
    async with AsyncTestClient(app=create_app(settings)) as client:
        r = await client.post(
            "/api/v1/files/upload",
            headers={"Authorization": f"Bearer {settings.api_key}"},
            data={"purpose": "batch"},
            files={"file": ("big.jsonl", content)},
        )
    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    assert await mongo_db["files.files"].count_documents({}) == 0
    assert await mongo_db["files.chunks"].count_documents({}) == 0


async def test_purpose_other_than_batch_is_rejected(api: Any) -> None:
    r = await api.upload(b'{"a":1}\n', purpose="fine-tune")
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_request" and "purpose" in r.json()["message"]
    assert await api.count("files.files") == 0


async def test_unknown_file_is_404_json(api: Any) -> None:
    for path in ("/api/v1/files/file_nope", "/api/v1/files/file_nope/content"):
        r = await api.get(path)
        assert r.status_code == 404
        assert r.json()["code"] == "file_not_found"
