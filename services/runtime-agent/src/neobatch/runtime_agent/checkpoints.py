"""Request-level checkpoints: one `batch_results` document per finished request.

Results are written in batches (`insert_many`, unordered; group commit: whatever finished
while the previous write was on the wire, after a 5 ms linger), never one write per request:
a Mongo-wire server does ~1,000 single inserts a second but ~20,000 documents a second in
batches (library-notes §8). `_id` = `<batch_id>:<line_index>`, so a
result written twice (a replayed flush, two agents racing over a lease hand-over) is stored
once: the duplicate-key error is expected and ignored (DESIGN rule 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, ConnectionFailure

from neobatch.common.clock import Clock
from neobatch.common.logs import log_fields
from neobatch.runtime_agent.dispatch import RequestResult

log = logging.getLogger("neobatch.runtime_agent.checkpoints")

RESULTS = "batch_results"
# One secondary index: every insert pays for each index (on SecantusDB the two this had cost
# more than the document itself), and its `batch_id` prefix serves `finished_indexes` too.
# (An older `batch_line` index on existing databases is harmless and unused.)
RESULT_INDEXES = [
    IndexModel(
        [("batch_id", ASCENDING), ("ok", ASCENDING), ("line_index", ASCENDING)], name="batch_ok"
    ),
]
DUPLICATE_KEY = 11000
# Documents per cursor round trip when reading results back: bounds what a read of a
# 50,000-request batch holds at once (a server may fill each batch up to 16 MB).
FIND_BATCH_SIZE = 1000
_RESULT_FIELDS = {"batch_id": 0, "ok": 0, "finished_at": 0}
Document = dict[str, Any]


def result_id(batch_id: str, line_index: int) -> str:
    return f"{batch_id}:{line_index}"


def result_to_doc(batch_id: str, result: RequestResult, now: datetime) -> Document:
    """The stored form: empty optional fields are left out (`result_from_doc` defaults them),
    so each insert encodes, ships and stores less."""
    doc: Document = {
        "_id": result_id(batch_id, result.line_index),
        "batch_id": batch_id,
        "line_index": result.line_index,
        "custom_id": result.custom_id,
        "ok": result.ok,
        "attempts": result.attempts,
        "finished_at": now,
    }
    if result.status_code is not None:
        doc["status_code"] = result.status_code
    if result.request_id:
        doc["request_id"] = result.request_id
    if result.body is not None:
        doc["body"] = result.body
    if result.error_code:
        doc["error_code"] = result.error_code
    if result.error_message:
        doc["error_message"] = result.error_message
    return doc


def result_from_doc(doc: Document) -> RequestResult:
    return RequestResult(
        line_index=doc["line_index"],
        custom_id=doc["custom_id"],
        status_code=doc.get("status_code"),
        request_id=doc.get("request_id", ""),
        body=doc.get("body"),
        error_code=doc.get("error_code", ""),
        error_message=doc.get("error_message", ""),
        attempts=doc.get("attempts", 0),
    )


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


class CheckpointWriter:
    """Buffers results and writes them in batches from one background task (group commit).

    The first result into an empty buffer starts a short linger (`flush_interval_seconds`)
    so results finishing together go out in one `insert_many`; results arriving while a
    write is on the wire go into the next one. Documents are built when their batch is
    written, with one `finished_at` for the batch.

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
        if self._task is not None and self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            if error is not None:
                raise error

    def _append(self, result: RequestResult) -> None:
        self._check()
        self._buffer.append(result)
        self._unstored += 1
        self._wake.set()

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
        try:
            while True:
                if not self._buffer and not self._closing:
                    await self._wake.wait()
                self._wake.clear()
                if self._buffer and len(self._buffer) < self._max_items and not self._closing:
                    await asyncio.sleep(self._interval)  # let the results finishing now join
                if self._buffer:
                    results, self._buffer = self._buffer, []
                    waiters, self._waiters = self._waiters, []
                    now = self._clock.now()
                    batch_id = self._batch_id
                    docs = [result_to_doc(batch_id, r, now) for r in results]
                    try:
                        await insert_results(self._collection, docs)
                    except BaseException as exc:
                        _fail(waiters, exc)
                        raise
                    self._unstored -= len(docs)
                    self.written += len(docs)
                    self.writes += 1
                    if self._on_stored is not None:
                        completed = sum(1 for d in docs if d["ok"])
                        self._on_stored(completed, len(docs) - completed)
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)
                    self._drained.set()
                elif self._closing:
                    return
        except BaseException as exc:
            error = exc
            raise
        finally:
            # Nobody may wait forever on a result that will not be written now.
            _fail(self._waiters, error or RuntimeError("checkpoint writer stopped"))
            self._waiters.clear()
            # Wake anyone blocked in add() so they see the failure (or the end).
            self._drained.set()


def _fail(waiters: list[asyncio.Future[None]], error: BaseException) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if isinstance(error, asyncio.CancelledError):
            waiter.cancel()
        else:
            waiter.set_exception(error)


async def finished_indexes(collection: AsyncCollection[Document], batch_id: str) -> set[int]:
    """Line indexes of requests already finished: a resumed run skips them."""
    cursor = collection.find({"batch_id": batch_id}, {"line_index": 1, "_id": 0})
    return {doc["line_index"] async for doc in cursor.batch_size(FIND_BATCH_SIZE)}


async def count_results(collection: AsyncCollection[Document], batch_id: str) -> tuple[int, int]:
    """(completed, failed) among the stored results."""
    completed = await collection.count_documents({"batch_id": batch_id, "ok": True})
    failed = await collection.count_documents({"batch_id": batch_id, "ok": False})
    return completed, failed


async def iter_results(
    collection: AsyncCollection[Document], batch_id: str, *, ok: bool
) -> AsyncIterator[RequestResult]:
    """Stored results of one kind, in input order."""
    cursor = (
        collection.find({"batch_id": batch_id, "ok": ok}, _RESULT_FIELDS)
        .sort("line_index", ASCENDING)
        .batch_size(FIND_BATCH_SIZE)
    )
    async for doc in cursor:
        yield result_from_doc(doc)
