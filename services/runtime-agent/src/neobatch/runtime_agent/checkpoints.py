"""Request-level checkpoints: one `batch_results` document per finished request.

Results are written in batches (`insert_many`, unordered; group commit: whatever finished
while the previous write was on the wire, after a 5 ms linger), never one write per request: a Mongo-wire server does ~1,000 single inserts a second but ~20,000
documents a second in batches (library-notes §8). `_id` = `<batch_id>:<line_index>`, so a
result written twice (a replayed flush, two agents racing over a lease hand-over) is stored
once: the duplicate-key error is expected and ignored (DESIGN rule 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
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
    return {
        "_id": result_id(batch_id, result.line_index),
        "batch_id": batch_id,
        "line_index": result.line_index,
        "custom_id": result.custom_id,
        "ok": result.ok,
        "status_code": result.status_code,
        "request_id": result.request_id,
        "body": result.body,
        "error_code": result.error_code,
        "error_message": result.error_message,
        "attempts": result.attempts,
        "finished_at": now,
    }


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
    write is on the wire go into the next one. `record` returns once its result is stored:
    dispatch holds the request's concurrency slot until then, so at any moment at most
    `concurrency` requests are unrecorded (sent, or answered but not yet stored) and a crash
    re-sends at most that many. `add` returns at once (it only waits when the database falls
    far behind, so memory stays bounded). `close` writes what is left. A write that fails
    for good is raised from `record`, from the next `add` or from `close`, so the run stops
    instead of silently losing results.
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
    ) -> None:
        self._collection = collection
        self._batch_id = batch_id
        self._clock = clock
        self._interval = flush_interval_seconds
        self._max_items = max_items
        self._max_pending = max_pending
        self._buffer: list[Document] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.writes = 0

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
        self._buffer.append(result_to_doc(self._batch_id, result, self._clock.now()))
        self._wake.set()

    async def add(self, result: RequestResult) -> None:
        """Buffer `result`; it is written with the next batch."""
        self._append(result)
        while len(self._buffer) >= self._max_pending:
            self._drained.clear()
            await self._drained.wait()
            self._check()

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
                    docs, self._buffer = self._buffer, []
                    waiters, self._waiters = self._waiters, []
                    try:
                        await insert_results(self._collection, docs)
                    except BaseException as exc:
                        _fail(waiters, exc)
                        raise
                    self.written += len(docs)
                    self.writes += 1
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
