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

Reading back is two passes so memory stays bounded by a cache, not by the batch: the first
reads only the small `lines`/`failed` arrays and maps each line to its winning page; the
second walks the lines in input order, fetching page blobs by `_id` into an LRU bounded by
bytes, each dropped once its last line is yielded (pages are nearly in line order, so almost
every lookup hits; a straggler, a retried request stored in a much later page, costs one
extra fetch at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
from array import array
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, ConnectionFailure

from neobatch.common.clock import Clock
from neobatch.common.logs import log_fields
from neobatch.runtime_agent.dispatch import RequestResult

log = logging.getLogger("neobatch.runtime_agent.checkpoints")

RESULTS = "batch_results"
# One secondary index, serving every reader: pages of a batch in `first_line` order.
# (Older `batch_ok`/`batch_line` indexes on existing databases are harmless and unused: a
# page has no `ok`/`line_index`, and there are only a few dozen page inserts a second.)
RESULT_INDEXES = [
    IndexModel([("batch_id", ASCENDING), ("first_line", ASCENDING)], name="batch_first_line"),
]
DUPLICATE_KEY = 11000
# Results per page, and a bound on a page's result bytes (bodies can be large; a document
# must stay under 16 MB). A write larger than either is split into several pages.
PAGE_ITEMS = 500
PAGE_BYTES = 4 * 1024 * 1024
# Page projections per cursor round trip in the first read pass (each a few KB at most).
FIND_BATCH_SIZE = 200
# Bytes of page blobs the second read pass keeps decoded (a few pages).
READ_CACHE_BYTES = 16 * 1024 * 1024
# Typecode of the packed line arrays: 4-byte unsigned, stored little-endian.
_LINE_TYPE = "I"
_ORDER = [("first_line", ASCENDING), ("_id", ASCENDING)]
_LINES_FIELDS = {"lines": 1, "failed": 1}
# The projection of a page that `page_lines` needs.
LINES_ONLY = {"lines": 1, "_id": 0}
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list[RequestResult])
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


def page_lines(pages: Iterable[Document]) -> set[int]:
    """The distinct lines stored in `pages` (documents with at least their `lines` field);
    for a synchronous reader: `page_lines(collection.find({"batch_id": b}, LINES_ONLY))`."""
    lines: set[int] = set()
    for page in pages:
        lines.update(unpack_lines(page["lines"]))
    return lines


def _size(result: RequestResult) -> int:
    body = len(result.body) if result.body is not None else 0
    return 48 + body + len(result.custom_id) + len(result.request_id) + len(result.error_message)


def build_pages(
    batch_id: str,
    results: Sequence[RequestResult],
    now: datetime,
    *,
    max_items: int = PAGE_ITEMS,
    max_bytes: int = PAGE_BYTES,
) -> list[Document]:
    """The page documents storing `results` (sorted by line; split at `max_items`/`max_bytes`).

    Ids are drawn here, once: an insert of these documents retried is a duplicate, not a copy.
    """
    ordered = sorted(results, key=lambda r: r.line_index)
    pages: list[Document] = []
    start = 0
    while start < len(ordered):
        end, size = start, 0
        while end < len(ordered) and end - start < max(1, max_items):
            size += _size(ordered[end])
            if end > start and size > max_bytes:
                break
            end += 1
        chunk = ordered[start:end]
        first = chunk[0].line_index
        pages.append(
            {
                "_id": f"{batch_id}:{first:09d}:{secrets.token_hex(6)}",
                "batch_id": batch_id,
                "first_line": first,
                "lines": pack_lines(r.line_index for r in chunk),
                "failed": pack_lines(r.line_index for r in chunk if not r.ok),
                "results": _ENCODER.encode(chunk),
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


# Checkpoint writes on the wire at once (see CheckpointWriter._run).
WRITES_IN_FLIGHT = 2
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


class CheckpointWriter:
    """Buffers results and writes them in batches from one background task (group commit).

    The first result into an empty buffer starts a short linger (`flush_interval_seconds`)
    so results finishing together go out in one `insert_many`; results arriving while a
    write is on the wire go into the next one. The linger ends early once half of
    `max_pending` results wait (or `max_items`): a fixed linger at a high rate filled the
    buffer past `max_pending` and paused dispatch (29% of requests paused at 8,400 req/s). Each write stores its results as one page
    document (several when it passes `max_items` results or `PAGE_BYTES`), built when the
    write starts, with one `finished_at` and page ids fixed for every retry of it.

    `add` returns at once unless more than `max_pending` results are unstored (buffered or
    on the wire): then it waits until a write brings them back under. Dispatch frees a
    request's concurrency slot when its answer arrives and calls `add` from that slot, so
    with `max_pending` = the concurrency no new request is sent while more than that many
    answers wait to be stored: a crash loses (and the resumed run re-sends) at most
    2 x concurrency requests, those in flight plus those answered but not yet stored.
    `record` returns only once its result is stored. `on_stored(completed, failed)` is
    called after each write with what it stored, so counts never include unstored results.
    `close` writes what is left. A write that fails for good is raised from `record`, from
    the next `add` or from `close`, so the run stops instead of silently losing results.
    """

    def __init__(
        self,
        collection: AsyncCollection[Document],
        batch_id: str,
        clock: Clock,
        *,
        flush_interval_seconds: float = 0.005,
        max_items: int = 500,
        max_pending: int = 10_000,
        on_stored: Callable[[int, int], None] | None = None,
    ) -> None:
        self._collection = collection
        self._batch_id = batch_id
        self._clock = clock
        self._interval = flush_interval_seconds
        self._max_items = max_items
        self._max_pending = max(1, max_pending)
        # Buffered results that end the linger at once.
        self._flush_at = max(1, min(max_items, self._max_pending // 2))
        self._full = asyncio.Event()
        # A write that failed for good: every later add/record raises it.
        self._failed: BaseException | None = None
        self._on_stored = on_stored
        self._buffer: list[RequestResult] = []
        # Results buffered or being written.
        self._unstored = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.writes = 0
        # Page documents inserted (one per write unless a write was split).
        self.pages = 0
        # Times `add` had to wait for a write (dispatch paused by backpressure).
        self.paused = 0

    @property
    def unstored(self) -> int:
        return self._unstored

    async def __aenter__(self) -> CheckpointWriter:
        self._task = asyncio.create_task(self._run(), name=f"checkpoints-{self._batch_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._task is not None and self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            if error is not None:
                raise error

    def _append(self, result: RequestResult) -> None:
        self._check()
        self._buffer.append(result)
        self._unstored += 1
        self._wake.set()
        if len(self._buffer) >= self._flush_at:
            self._full.set()

    async def add(self, result: RequestResult) -> None:
        """Buffer `result`; it is written with the next batch (waits while too many are)."""
        self._append(result)
        if self._unstored > self._max_pending:
            self.paused += 1
            while self._unstored > self._max_pending:
                self._drained.clear()
                await self._drained.wait()
                self._check()
                if self._task is None or self._task.done():
                    raise RuntimeError("checkpoint writer stopped")

    async def record(self, result: RequestResult) -> None:
        """Buffer `result` and return once it is stored (raises if it cannot be)."""
        self._append(result)
        stored = asyncio.get_running_loop().create_future()
        self._waiters.append(stored)
        await stored

    async def close(self) -> None:
        """Write everything buffered, then stop the writer task."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            finally:
                self._task = None

    async def abort(self) -> None:
        """Stop without writing the rest (the run is being abandoned)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        error: BaseException | None = None
        writing: set[asyncio.Task[None]] = set()
        try:
            while True:
                if not self._buffer and not self._closing:
                    await self._wake.wait()
                self._wake.clear()
                _reap(writing)  # a failed write stops the writer here
                if self._buffer and len(self._buffer) < self._flush_at and not self._closing:
                    # Let the results finishing now join, unless enough are here already.
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self._interval)
                if self._buffer:
                    # Two writes on the wire at once: the next one does not wait out the
                    # previous round trip while dispatch fills the buffer.
                    while len(writing) >= WRITES_IN_FLIGHT:
                        await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                        _reap(writing)
                    results, self._buffer = self._buffer, []
                    waiters, self._waiters = self._waiters, []
                    pages = build_pages(
                        self._batch_id, results, self._clock.now(), max_items=self._max_items
                    )
                    writing.add(asyncio.create_task(self._write(results, pages, waiters)))
                elif self._closing:
                    if writing:
                        await asyncio.wait(writing)
                        _reap(writing)
                    return
        except BaseException as exc:
            error = exc
            raise
        finally:
            for task in writing:
                task.cancel()
            if writing:
                await asyncio.wait(writing)
            # Nobody may wait forever on a result that will not be written now.
            _fail(self._waiters, error or RuntimeError("checkpoint writer stopped"))
            self._waiters.clear()
            # Wake anyone blocked in add() so they see the failure (or the end).
            self._drained.set()

    async def _write(
        self,
        results: list[RequestResult],
        pages: list[Document],
        waiters: list[asyncio.Future[None]],
    ) -> None:
        try:
            await insert_results(self._collection, pages)
        except BaseException as exc:
            _fail(waiters, exc)
            if not isinstance(exc, asyncio.CancelledError):
                self._failed = exc  # the next add() raises it, before the loop has stopped
            self._wake.set()  # the writer loop reaps this task and stops
            raise
        self._unstored -= len(results)
        self.written += len(results)
        self.writes += 1
        self.pages += len(pages)
        if self._on_stored is not None:
            completed = sum(1 for r in results if r.ok)
            self._on_stored(completed, len(results) - completed)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drained.set()


def _reap(writing: set[asyncio.Task[None]]) -> None:
    """Drop finished writes; raise the first one's error."""
    for task in [t for t in writing if t.done()]:
        writing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def _fail(waiters: list[asyncio.Future[None]], error: BaseException) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if isinstance(error, asyncio.CancelledError):
            waiter.cancel()
        else:
            waiter.set_exception(error)


class _Winners:
    """For each line of a batch, the page whose copy of it counts (read pass 1).

    `page[line]` is an index into `page_ids` (-1: the line is not stored), `failed[line]` is
    1 when the winning copy is a failure. Pages are read in `(first_line, _id)` order and the
    first page holding a line wins. About 5 bytes a line, whatever the results weigh.
    """

    def __init__(self) -> None:
        self.page_ids: list[str] = []
        self.page = array("i")
        self.failed = bytearray()

    def add(self, page_id: str, lines: array[int], failed: array[int]) -> None:
        number = len(self.page_ids)
        self.page_ids.append(page_id)
        if not lines:
            return
        top = max(lines)
        if top >= len(self.page):
            grow = top + 1 - len(self.page)
            self.page.extend(array("i", [-1]) * grow)
            self.failed.extend(bytes(grow))
        fails = set(failed)
        page = self.page
        for line in lines:
            if page[line] < 0:
                page[line] = number
                if line in fails:
                    self.failed[line] = 1

    def counts(self) -> tuple[int, int]:
        stored = len(self.page) - self.page.count(-1)
        failed = self.failed.count(1)
        return stored - failed, failed


async def _winners(collection: AsyncCollection[Document], batch_id: str) -> _Winners:
    winners = _Winners()
    cursor = (
        collection.find({"batch_id": batch_id}, _LINES_FIELDS)
        .sort(_ORDER)
        .batch_size(FIND_BATCH_SIZE)
    )
    async for doc in cursor:
        winners.add(doc["_id"], unpack_lines(doc["lines"]), unpack_lines(doc["failed"]))
    return winners


async def finished_indexes(collection: AsyncCollection[Document], batch_id: str) -> set[int]:
    """Line indexes of requests already finished: a resumed run skips them."""
    done: set[int] = set()
    cursor = collection.find({"batch_id": batch_id}, LINES_ONLY)
    async for doc in cursor.batch_size(FIND_BATCH_SIZE):
        done.update(unpack_lines(doc["lines"]))
    return done


async def count_stored(collection: AsyncCollection[Document], batch_id: str) -> int:
    """How many distinct lines of the batch have a stored result."""
    return len(await finished_indexes(collection, batch_id))


async def count_results(collection: AsyncCollection[Document], batch_id: str) -> tuple[int, int]:
    """(completed, failed) among the stored results: distinct lines, the first copy wins."""
    return (await _winners(collection, batch_id)).counts()


async def iter_results(
    collection: AsyncCollection[Document],
    batch_id: str,
    *,
    ok: bool,
    cache_bytes: int = READ_CACHE_BYTES,
) -> AsyncIterator[RequestResult]:
    """Stored results of one kind, in input order (the winning copy of each line).

    Holds the line -> page map (pass 1) and at most `cache_bytes` of page blobs, decoded
    (at least the page in use), however large the batch.
    """
    winners = await _winners(collection, batch_id)
    want = 0 if ok else 1
    # page number -> (its results of the wanted kind by line, the page blob's size)
    cache: OrderedDict[int, tuple[dict[int, RequestResult], int]] = OrderedDict()
    held = 0
    page_of, failed = winners.page, winners.failed
    # Lines each page has still to yield: a page is dropped once it has none left, so the
    # cache normally holds one or two pages and only stragglers' pages wait in it.
    left = [0] * len(winners.page_ids)
    for line, number in enumerate(page_of):
        if number >= 0 and failed[line] == want:
            left[number] += 1
    for line in range(len(page_of)):
        number = page_of[line]
        if number < 0 or failed[line] != want:
            continue
        entry = cache.get(number)
        if entry is None:
            entry = await _fetch_page(collection, winners.page_ids[number], ok)
            cache[number] = entry
            held += entry[1]
            while held > cache_bytes and len(cache) > 1:
                _, (_, size) = cache.popitem(last=False)
                held -= size
        else:
            cache.move_to_end(number)
        result = entry[0][line]
        left[number] -= 1
        if not left[number]:
            del cache[number]
            held -= entry[1]
        yield result


async def _fetch_page(
    collection: AsyncCollection[Document], page_id: str, ok: bool
) -> tuple[dict[int, RequestResult], int]:
    doc = await collection.find_one({"_id": page_id}, {"results": 1, "_id": 0})
    if doc is None:
        raise RuntimeError(f"checkpoint page {page_id} disappeared while being read")
    blob: bytes = doc["results"]
    by_line: dict[int, RequestResult] = {}
    for result in _DECODER.decode(blob):
        if result.ok == ok:
            by_line.setdefault(result.line_index, result)
    return by_line, len(blob)
