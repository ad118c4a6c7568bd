"""The shared file store: batch input, output and error files in GridFS.

A file is a GridFS entry in bucket `files` whose `_id` is our file id, so there is one
record per file and nothing to keep in step. The console writes uploads; the runtime-agent
reads inputs and writes outputs. Content is streamed in chunks, never held whole in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec
from gridfs import AsyncGridFSBucket, NoFile
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.errors import NotFound
from neobatch.common.ids import new_id

BUCKET = "files"
CHUNK_BYTES = 255 * 1024


class FileInfo(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    filename: str
    bytes: int
    purpose: str
    owner: str
    created_at: datetime


def new_file_id() -> str:
    return new_id("file")


def bucket(db: AsyncDatabase[dict[str, Any]]) -> AsyncGridFSBucket:
    return AsyncGridFSBucket(db, bucket_name=BUCKET, chunk_size_bytes=CHUNK_BYTES)


def _info(doc: dict[str, Any]) -> FileInfo:
    meta = doc.get("metadata") or {}
    return FileInfo(
        id=doc["_id"],
        filename=doc.get("filename", ""),
        bytes=doc.get("length", 0),
        purpose=meta.get("purpose", ""),
        owner=meta.get("owner", ""),
        created_at=doc["uploadDate"],
    )


async def find_file(db: AsyncDatabase[dict[str, Any]], file_id: str) -> FileInfo | None:
    doc = await db[f"{BUCKET}.files"].find_one({"_id": file_id})
    return _info(doc) if doc else None


async def get_file(db: AsyncDatabase[dict[str, Any]], file_id: str) -> FileInfo:
    info = await find_file(db, file_id)
    if info is None:
        raise NotFound(f"file {file_id!r} not found", code="file_not_found")
    return info


async def save_file(
    db: AsyncDatabase[dict[str, Any]],
    file_id: str,
    filename: str,
    chunks: AsyncIterator[bytes],
    *,
    purpose: str,
    owner: str,
) -> FileInfo:
    """Stream `chunks` into a new file named `file_id`. Idempotent: an existing file is replaced.

    Replacing matters for the runtime-agent, which may rewrite an output file after a crash.
    """
    store = bucket(db)
    try:
        await store.delete(file_id)
    except NoFile:
        pass
    grid_in = store.open_upload_stream_with_id(
        file_id, filename, metadata={"purpose": purpose, "owner": owner}
    )
    try:
        async for chunk in chunks:
            await grid_in.write(chunk)
    except BaseException:
        await grid_in.abort()
        raise
    await grid_in.close()
    return await get_file(db, file_id)


async def iter_file(db: AsyncDatabase[dict[str, Any]], file_id: str) -> AsyncIterator[bytes]:
    """Yield the content of `file_id` chunk by chunk."""
    try:
        grid_out = await bucket(db).open_download_stream(file_id)
    except NoFile:
        raise NotFound(f"file {file_id!r} not found", code="file_not_found") from None
    while chunk := await grid_out.readchunk():
        yield chunk


async def iter_lines(db: AsyncDatabase[dict[str, Any]], file_id: str) -> AsyncIterator[bytes]:
    """Yield each line of `file_id` without its trailing newline (the last may lack one)."""
    pending = b""
    async for chunk in iter_file(db, file_id):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line
    if pending:
        yield pending


async def delete_file(db: AsyncDatabase[dict[str, Any]], file_id: str) -> bool:
    try:
        await bucket(db).delete(file_id)
    except NoFile:
        return False
    return True
