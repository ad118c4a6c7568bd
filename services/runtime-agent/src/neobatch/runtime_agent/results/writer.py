"""`CheckpointWriter`: a batch's results go to `batch_results` in groups, from one task.

Page format and inserts: `pages`. Why groups: a Mongo-wire server does about 1,000 single
inserts a second (library-notes §8), the dispatch benchmark asks for 8,000+ results a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from neobatch.common.aio import wait_for_event
from neobatch.common.clock import Clock
from neobatch.runtime_agent.dispatch.tally import RequestResult
from neobatch.runtime_agent.results.pages import (
    LINE_BYTES,
    build_pages,
    insert_results,
    result_size,
)

# Checkpoint writes on the wire at once (see CheckpointWriter._run).
WRITES_IN_FLIGHT = 2
# Bytes of answers one batch holds unstored (buffered or on the wire) before `add` waits: the
# count bound (`max_pending`, the concurrency) let 256 answers of 4 MiB pile up to 1 GiB.
MAX_PENDING_BYTES = 32 * 1024 * 1024
# Answers that may wait to be stored before dispatch pauses, at least (`pending_limit`): a
# real engine answers in waves (a whole step's finished sequences at once), ~500 a second on
# the CPU vLLM with 256 in flight, and a database sharing the machine can take half a second
# a write; with the limit at the concurrency (256) that paused dispatch for 173 of 4,000
# requests. Memory stays bounded by the byte bound whatever the count.
MIN_PENDING = 2048


def pending_limit(concurrency: int) -> int:
    """`max_pending` for a dispatch with at most `concurrency` requests in flight."""
    return max(concurrency, MIN_PENDING)


Document = dict[str, Any]
Insert = Callable[[list[RequestResult], list[Document]], Awaitable[list[Document]]]


class CheckpointWriter:
    """Buffers results and writes them in batches from one background task (group commit).

    The first result into an empty buffer starts a short linger (`flush_interval_seconds`)
    so results finishing together go out in one `insert_many`; results arriving while a
    write is on the wire go into the next one. The linger ends early once half of
    `max_pending` results wait (or `max_items`): a fixed linger at a high rate filled the
    buffer past `max_pending` and paused dispatch (29% of requests paused at 8,400 req/s).
    Each write stores its results as one page document (several when it passes `max_items`
    results or `PAGE_BYTES`), built when the write starts, with one `finished_at` and page ids
    fixed for every retry of it.

    `add` returns at once unless more than `max_pending` results, or more than
    `max_pending_bytes` of them, are unstored (buffered or on the wire): then it waits until a
    write brings them back under (the linger also ends once half of `max_pending_bytes` is
    buffered). So large answers hold at most about `max_pending_bytes` (plus the answer just
    added) here, whatever the concurrency. Dispatch frees a request's concurrency slot when
    its answer arrives and calls `add` from that slot, so no new request is sent while more
    than `max_pending` answers wait to be stored: a crash loses (and the resumed run re-sends)
    at most concurrency + max_pending requests, those in flight plus those answered but not
    yet stored.
    `on_stored(completed, failed)` is called after each write with what it stored, so counts
    never include unstored results. `close` writes what is left. A write that fails for good
    is raised from the next `add` or from `close`, so the run stops instead of silently
    losing results.
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
        max_pending_bytes: int = MAX_PENDING_BYTES,
        on_stored: Callable[[int, int], None] | None = None,
        insert: Insert | None = None,
    ) -> None:
        self._collection = collection
        # Stores one write's pages, returning those it stored (a spread batch's machine run
        # stores only the results its chunk claims still cover: `machine_store.store_fenced`).
        self._insert = insert
        self._batch_id = batch_id
        self._clock = clock
        self._interval = flush_interval_seconds
        self._max_items = max_items
        self._max_pending = max(1, max_pending)
        # Buffered results that end the linger at once.
        self._flush_at = max(1, min(max_items, self._max_pending // 2))
        self._max_pending_bytes = max(1, max_pending_bytes)
        self._flush_bytes = max(1, self._max_pending_bytes // 2)
        self._buffer_bytes = 0
        self._full = asyncio.Event()
        # A write that failed for good: every later add raises it.
        self._failed: BaseException | None = None
        self._on_stored = on_stored
        self._buffer: list[RequestResult] = []
        # Results buffered or being written, and their bytes (`result_size`).
        self._unstored = 0
        self._unstored_bytes = 0
        self.peak_unstored_bytes = 0
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

    async def add(self, result: RequestResult) -> None:
        """Buffer `result`; it is written with the next batch (waits while too many are)."""
        self._check()
        size = result_size(result)
        self._buffer.append(result)
        self._buffer_bytes += size
        self._unstored += 1
        self._unstored_bytes += size
        self.peak_unstored_bytes = max(self.peak_unstored_bytes, self._unstored_bytes)
        self._wake.set()
        if len(self._buffer) >= self._flush_at or self._buffer_bytes >= self._flush_bytes:
            self._full.set()
        if self._over_bound():
            self.paused += 1
            while self._over_bound():
                self._drained.clear()
                await self._drained.wait()
                self._check()
                if self._task is None or self._task.done():
                    raise RuntimeError("checkpoint writer stopped")

    def _over_bound(self) -> bool:
        # One result alone never waits on the byte bound (it is below it: 15 MiB at most).
        return self._unstored > self._max_pending or (
            self._unstored_bytes > self._max_pending_bytes and self._unstored > 1
        )

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
        writing: set[asyncio.Task[None]] = set()
        try:
            while True:
                if not self._buffer and not self._closing:
                    await self._wake.wait()
                self._wake.clear()
                _reap(writing)  # a failed write stops the writer here
                if (
                    self._buffer
                    and len(self._buffer) < self._flush_at
                    and self._buffer_bytes < self._flush_bytes
                    and not self._closing
                ):
                    # Let the results finishing now join, unless enough are here already.
                    self._full.clear()
                    await wait_for_event(self._full, self._interval)
                if self._buffer:
                    # Two writes on the wire at once: the next one does not wait out the
                    # previous round trip while dispatch fills the buffer.
                    while len(writing) >= WRITES_IN_FLIGHT:
                        await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                        _reap(writing)
                    results, self._buffer = self._buffer, []
                    size, self._buffer_bytes = self._buffer_bytes, 0
                    pages = build_pages(
                        self._batch_id, results, self._clock.now(), max_items=self._max_items
                    )
                    writing.add(asyncio.create_task(self._write(results, pages, size)))
                elif self._closing:
                    if writing:
                        await asyncio.wait(writing)
                        _reap(writing)
                    return
        finally:
            for task in writing:
                task.cancel()
            if writing:
                await asyncio.wait(writing)
            # Wake anyone blocked in add() so they see the failure (or the end).
            self._drained.set()

    async def _write(self, results: list[RequestResult], pages: list[Document], size: int) -> None:
        stored = pages
        try:
            if self._insert is None:
                await insert_results(self._collection, pages)
            else:
                stored = await self._insert(results, pages)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._failed = exc  # the next add() raises it, before the loop has stopped
            self._wake.set()  # the writer loop reaps this task and stops
            raise
        self._unstored -= len(results)
        self._unstored_bytes -= size
        self.written += len(results)
        self.writes += 1
        self.pages += len(pages)
        if self._on_stored is not None:
            # Counted from the pages: a result too large to store went in as a failure.
            failed = sum(len(page["failed"]) for page in stored) // LINE_BYTES
            kept = len(results) if stored is pages else _lines(stored)
            self._on_stored(kept - failed, failed)
        self._drained.set()


def _lines(pages: list[Document]) -> int:
    return sum(len(page["lines"]) for page in pages) // LINE_BYTES


def _reap(writing: set[asyncio.Task[None]]) -> None:
    """Drop finished writes; raise the first one's error."""
    for task in [t for t in writing if t.done()]:
        writing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
