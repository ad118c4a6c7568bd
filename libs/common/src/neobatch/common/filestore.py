"""The shared file store: batch input, output and error files in GridFS.

A file is a GridFS entry in bucket `files` whose `_id` is our file id, so there is one
record per file and nothing to keep in step. The console writes uploads; the runtime-agent
reads inputs and writes outputs. Content is streamed in chunks, never held whole in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from gridfs import AsyncGridFSBucket, NoFile
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.errors import NotFound
from neobatch.common.ids import new_id

BUCKET = "files"
CHUNK_BYTES = 255 * 1024
# Chunks fetched per cursor round trip when reading, and inserted per write: about 1-2 MB in
# memory at a time.
READ_BATCH_CHUNKS = 8
WRITE_BATCH_CHUNKS = 4


class CorruptFile(Exception):
    """A stored file whose chunks do not add up to its length."""


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


def file_info(doc: dict[str, Any]) -> FileInfo:
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
    return file_info(doc) if doc else None


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
    The GridFS layout is written here, a few chunks per insert: pymongo's upload stream holds
    up to 32 MB of chunks before inserting them, and encodes them all at once, which cost
    about 90 MB of peak memory per large file (`task bench:dispatch`, memory). As in GridFS
    the file document is written last, so a file is visible only once it is complete; a
    failed upload removes the chunks it wrote.
    """
    await _ensure_indexes(db)
    try:
        await bucket(db).delete(file_id)
    except NoFile:
        pass  # GridFS's delete removes stray chunks of an unfinished file even then
    chunk_coll = db[f"{BUCKET}.chunks"]
    pending = bytearray()
    docs: list[dict[str, Any]] = []
    n = length = 0

    async def flush() -> None:
        if docs:
            await chunk_coll.insert_many(docs, ordered=True)
            docs.clear()

    def cut(data: bytes) -> None:
        nonlocal n
        docs.append({"files_id": file_id, "n": n, "data": data})
        n += 1

    try:
        async for piece in chunks:
            length += len(piece)
            pending += piece
            while len(pending) >= CHUNK_BYTES:
                cut(bytes(pending[:CHUNK_BYTES]))
                del pending[:CHUNK_BYTES]
                if len(docs) >= WRITE_BATCH_CHUNKS:
                    await flush()
        if pending:
            cut(bytes(pending))
        await flush()
        await db[f"{BUCKET}.files"].insert_one(
            {
                "_id": file_id,
                "length": length,
                "chunkSize": CHUNK_BYTES,
                # BSON dates keep milliseconds; GridFS stamps the upload the same way.
                "uploadDate": _now_ms(),
                "filename": filename,
                "metadata": {"purpose": purpose, "owner": owner},
            }
        )
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.shield(chunk_coll.delete_many({"files_id": file_id}))
        raise
    return await get_file(db, file_id)


async def _ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    """GridFS's own indexes (what its upload stream creates before a first write)."""
    await db[f"{BUCKET}.chunks"].create_index(
        [("files_id", ASCENDING), ("n", ASCENDING)], unique=True
    )
    await db[f"{BUCKET}.files"].create_index([("filename", ASCENDING), ("uploadDate", ASCENDING)])


def _now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


async def iter_file(db: AsyncDatabase[dict[str, Any]], file_id: str) -> AsyncIterator[bytes]:
    """Yield the content of `file_id` chunk by chunk.

    The chunks are read with a small cursor batch: GridFS's own download stream lets the
    server fill each batch up to 16 MB, which a 200 MB batch input turns into tens of MB
    held at once (`task bench:dispatch`, memory). A missing or short chunk is an error,
    as in GridFS.
    """
    doc = await db[f"{BUCKET}.files"].find_one({"_id": file_id}, {"length": 1, "chunkSize": 1})
    if doc is None:
        raise NotFound(f"file {file_id!r} not found", code="file_not_found")
    length, chunk_size = int(doc.get("length", 0)), int(doc.get("chunkSize", CHUNK_BYTES))
    expected = -(-length // chunk_size) if chunk_size else 0
    cursor = (
        db[f"{BUCKET}.chunks"]
        .find({"files_id": file_id}, {"n": 1, "data": 1, "_id": 0})
        .sort("n", ASCENDING)
        .batch_size(READ_BATCH_CHUNKS)
    )
    n = 0
    async for chunk in cursor:
        if n >= expected:
            break
        if chunk["n"] != n:
            raise CorruptFile(f"file {file_id!r}: chunk {n} is missing")
        data = bytes(chunk["data"])
        size = chunk_size if n < expected - 1 else length - chunk_size * (expected - 1)
        if len(data) != size:
            raise CorruptFile(f"file {file_id!r}: chunk {n} has {len(data)} bytes, not {size}")
        n += 1
        yield data
    if n < expected:
        raise CorruptFile(f"file {file_id!r}: chunk {n} is missing")


async def iter_lines(
    db: AsyncDatabase[dict[str, Any]], file_id: str, max_line_bytes: int | None = None
) -> AsyncIterator[bytes]:
    """Yield each line of `file_id` without its trailing newline (the last may lack one)."""
    async for line in split_lines(iter_file(db, file_id), max_line_bytes):
        yield line


async def split_lines(
    chunks: AsyncIterator[bytes], max_line_bytes: int | None = None
) -> AsyncIterator[bytes]:
    """The lines of a stream of chunks, each without its newline, holding at most one line
    and one chunk.

    A line longer than `max_line_bytes` is yielded as its first `max_line_bytes + 1` bytes
    (enough for a reader to see it is too long) and the rest of it is skipped as it streams
    by, so a hostile file cannot make a reader hold a 200 MB line. The buffer is a bytearray
    cut in place: appending to a bytes object copied the whole pending line per chunk,
    quadratic in a long line.
    """
    cap = max_line_bytes
    pending = bytearray()
    skipping = False  # inside an over-long line whose head was already yielded
    async for chunk in chunks:
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            if skipping:
                skipping = False
            elif not pending:
                yield _capped(chunk[start:newline], cap)
            else:
                pending += memoryview(chunk)[start:newline]
                yield _capped(bytes(pending), cap)
                pending.clear()
            start = newline + 1
        if skipping or start == len(chunk):
            continue
        pending += memoryview(chunk)[start:]
        if cap is not None and len(pending) > cap:
            yield bytes(memoryview(pending)[: cap + 1])
            pending.clear()
            skipping = True
    if pending:
        yield _capped(bytes(pending), cap)


def _capped(line: bytes, cap: int | None) -> bytes:
    return line if cap is None or len(line) <= cap else line[: cap + 1]


async def delete_file(db: AsyncDatabase[dict[str, Any]], file_id: str) -> bool:
    try:
        await bucket(db).delete(file_id)
    except NoFile:
        return False
    return True
