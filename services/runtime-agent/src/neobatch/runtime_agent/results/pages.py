"""Request-level checkpoints: `batch_results` holds PAGES of finished requests.

Each group commit of `CheckpointWriter` stores one page document (a few when it is large):
the page's line indexes and the indexes of its failures as packed integer arrays, and its
`RequestResult`s as one msgpack blob (bodies stay binary). Why pages: with one document per
finished request the database (SecantusDB, a Python Mongo-wire server in its own process)
spent ~0.24 ms CPU per request, so at the 8,000+ req/s the dispatch benchmark asks for it
alone needed two cores; a page per write makes that a few dozen documents a second (the
throughput bench measured 0.23 -> 0.03 ms database CPU per request). Writes
are never one per request either: a Mongo-wire server does ~1,000 single inserts a second
(library-notes §8).

A page `_id` is `<batch_id>:<first_line:09d>:<random token>`, chosen before the first insert
attempt: an insert retried after a dropped connection hits the duplicate key and is ignored.
A line may still be stored in two pages (a flush replayed with a fresh token after a crash,
two agents racing over a lease hand-over; DESIGN rule 3). The rule for every reader: the
first occurrence in `(first_line, _id)` order wins, and counts count distinct lines.

The writer is `writer.CheckpointWriter`, the readers are in `reading`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from array import array
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, ConnectionFailure

from neobatch.common.logs import log_fields
from neobatch.runtime_agent.dispatch.tally import RequestResult

log = logging.getLogger("neobatch.runtime_agent.results.pages")

RESULTS = "batch_results"
# One secondary index, serving every reader: pages of a batch in `first_line` order.
# (Older `batch_ok`/`batch_line` indexes on existing databases are harmless and unused: a
# page has no `ok`/`line_index`, and there are only a few dozen page inserts a second.)
RESULT_INDEXES = [
    IndexModel([("batch_id", ASCENDING), ("first_line", ASCENDING)], name="batch_first_line"),
]
DUPLICATE_KEY = 11000
# Results per page, and a bound on a page's result bytes (bodies can be large; a document
# must stay under 16 MB). A write larger than either is split into several pages; a single
# result larger than PAGE_BYTES gets a page of its own.
PAGE_ITEMS = 500
PAGE_BYTES = 4 * 1024 * 1024
# The most one result may weigh in a page: whatever the engine or the input held, a page stays
# under MongoDB's 16 MiB document limit (the HTTP client already cuts bodies off at
# NEOBATCH_MAX_RESPONSE_BYTES, at most 15 MiB: this is the backstop). A result over it is
# stored as its line's `response_too_large` error, without the body.
MAX_RESULT_BYTES = 15 * 1024 * 1024 + 64 * 1024
# A custom_id kept whole up to this; beyond, only where the result would not fit otherwise.
_CUSTOM_ID_KEPT = 1024
# Documents per cursor round trip when reading pages or legacy results.
FIND_BATCH_SIZE = 200
# Typecode of the packed line arrays: 4-byte unsigned, stored little-endian.
_LINE_TYPE = "I"
LINE_BYTES = array(_LINE_TYPE).itemsize
_ENCODER = msgspec.msgpack.Encoder()
# Decodes a page's `results` blob (`reading` reads pages back with it).
RESULTS_DECODER = msgspec.msgpack.Decoder(list[RequestResult])
Document = dict[str, Any]


def pack_lines(indexes: Iterable[int]) -> bytes:
    packed = array(_LINE_TYPE, indexes)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def unpack_lines(data: bytes) -> array[int]:
    """The line indexes packed in a page's `lines` or `failed` field."""
    unpacked = array(_LINE_TYPE)
    unpacked.frombytes(data)
    if sys.byteorder == "big":
        unpacked.byteswap()
    return unpacked


def result_size(result: RequestResult) -> int:
    """About the bytes `result` weighs in memory and in a page."""
    body = len(result.body) if result.body is not None else 0
    return 48 + body + len(result.custom_id) + len(result.request_id) + len(result.error_message)


def bounded(result: RequestResult) -> RequestResult:
    """`result`, or its `response_too_large` error when it would not fit in a page."""
    if result_size(result) <= MAX_RESULT_BYTES:
        return result
    custom_id = result.custom_id
    if len(custom_id) > MAX_RESULT_BYTES // 2:
        custom_id = custom_id[:_CUSTOM_ID_KEPT]  # only an input without a line bound gets here
    return msgspec.structs.replace(
        result,
        custom_id=custom_id,
        body=None,
        error_code="response_too_large",
        error_message=f"the result is over the {MAX_RESULT_BYTES}-byte limit of one stored result",
    )


def build_pages(
    batch_id: str,
    results: Sequence[RequestResult],
    now: datetime,
    *,
    max_items: int = PAGE_ITEMS,
    max_bytes: int = PAGE_BYTES,
) -> list[Document]:
    """The page documents storing `results` (sorted by line; split at `max_items`/`max_bytes`).

    Each page holds at most `max_bytes` of results, or one result (`bounded`): under MongoDB's
    16 MiB document limit whatever the results are. Ids are drawn here, once: an insert of these documents retried is a duplicate, not a copy.
    """
    ordered = sorted(map(bounded, results), key=lambda r: r.line_index)
    pages: list[Document] = []
    start = 0
    while start < len(ordered):
        end, size = start, 0
        while end < len(ordered) and end - start < max(1, max_items):
            size += result_size(ordered[end])
            if end > start and size > max_bytes:
                break
            end += 1
        chunk = ordered[start:end]
        first = chunk[0].line_index
        blob = _ENCODER.encode(chunk)
        pages.append(
            {
                "_id": f"{batch_id}:{first:09d}:{secrets.token_hex(6)}",
                "batch_id": batch_id,
                "first_line": first,
                "lines": pack_lines(r.line_index for r in chunk),
                "failed": pack_lines(r.line_index for r in chunk if not r.ok),
                "results": blob,
                # What reading it back costs: readers size their ranges by it (`reading`).
                "bytes": len(blob),
                "finished_at": now,
            }
        )
        start = end
    return pages


async def insert_results(collection: AsyncCollection[Document], docs: list[Document]) -> None:
    """Insert, tolerating documents that already exist; retry a dropped connection a few times."""
    delay = 0.2
    for attempt in range(1, 6):
        try:
            await collection.insert_many(docs, ordered=False)
            return
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if all(e.get("code") == DUPLICATE_KEY for e in errors):
                return
            raise
        except ConnectionFailure:
            if attempt == 5:
                raise
            log.warning("checkpoint write failed; retrying", extra=log_fields(attempt=attempt))
            await asyncio.sleep(delay)
            delay *= 2


async def store_results(
    collection: AsyncCollection[Document],
    batch_id: str,
    results: Sequence[RequestResult],
    now: datetime,
    *,
    max_items: int = PAGE_ITEMS,
) -> list[Document]:
    """Store `results` as pages (what one checkpoint write does); returns the pages written."""
    pages = build_pages(batch_id, results, now, max_items=max_items)
    if pages:
        await insert_results(collection, pages)
    return pages


# A result stored the old way, one document per request (before pages): it has `line_index`.
_LEGACY = {"line_index": {"$exists": True}}


def _from_legacy(doc: Document) -> RequestResult:
    body = doc.get("body")
    return RequestResult(
        line_index=doc["line_index"],
        custom_id=doc["custom_id"],
        status_code=doc.get("status_code"),
        request_id=doc.get("request_id", ""),
        body=bytes(body) if body is not None else None,
        error_code=doc.get("error_code", ""),
        error_message=doc.get("error_message", ""),
        attempts=doc.get("attempts", 0),
    )


async def upgrade_legacy_results(collection: AsyncCollection[Document], now: datetime) -> int:
    """Turn results stored one document per request (before pages) into pages; returns how many.

    Run at start-up, so a batch in progress across the upgrade resumes from what it had
    finished instead of sending it again. A crash half-way is harmless: the rerun stores those
    lines in another page too (the winner rule reads one) and then deletes the old documents.
    """
    moved = 0
    for batch_id in await collection.distinct("batch_id", _LEGACY):
        cursor = collection.find({"batch_id": batch_id, **_LEGACY}).batch_size(FIND_BATCH_SIZE)
        chunk: list[RequestResult] = []
        async for doc in cursor:
            chunk.append(_from_legacy(doc))
            if len(chunk) >= PAGE_ITEMS:
                await store_results(collection, batch_id, chunk, now)
                moved, chunk = moved + len(chunk), []
        if chunk:
            await store_results(collection, batch_id, chunk, now)
            moved += len(chunk)
        await collection.delete_many({"batch_id": batch_id, **_LEGACY})
    if moved:
        log.info("per-request results stored as pages", extra=log_fields(results=moved))
    return moved
