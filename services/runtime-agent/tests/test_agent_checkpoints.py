"""Checkpoint pages against the real Mongo-wire server: duplicates, winners, order, memory bound."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import bson

from neobatch.common.clock import SystemClock
from neobatch.runtime_agent.dispatch.tally import RequestResult
from neobatch.runtime_agent.results.pages import (
    RESULT_INDEXES,
    build_pages,
    insert_results,
    store_results,
    unpack_lines,
    upgrade_legacy_results,
)
from neobatch.runtime_agent.results.reading import (
    count_results,
    finished_indexes,
    iter_results,
)
from neobatch.runtime_agent.results.writer import CheckpointWriter
from neobatch.sim.testing.waiting import wait_until

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _ok(index: int, body: bytes | None = None) -> RequestResult:
    return RequestResult(
        line_index=index,
        custom_id=f"c{index}",
        status_code=200,
        request_id=f"r{index}",
        body=body if body is not None else b'{"n": %d}' % index,
        attempts=1,
    )


def _failed(index: int, message: str = "boom") -> RequestResult:
    return RequestResult(
        line_index=index,
        custom_id=f"c{index}",
        error_code="request_failed",
        error_message=message,
        attempts=3,
    )


def _batch() -> str:
    return f"batch_pages_{time.time_ns()}"


async def _all(collection: Any, batch_id: str, *, ok: bool, **kw: Any) -> list[RequestResult]:
    return [r async for r in iter_results(collection, batch_id, ok=ok, **kw)]


async def test_a_replayed_page_with_the_same_id_is_stored_once(mongo_db) -> None:
    collection = mongo_db["batch_results"]
    await collection.create_indexes(RESULT_INDEXES)
    batch_id = _batch()
    pages = build_pages(batch_id, [_ok(i) for i in range(30)], NOW, max_items=10)
    assert len(pages) == 3
    await insert_results(collection, pages)
    # A retry after a dropped connection: the same documents, so the same ids.
    await insert_results(collection, pages)
    await insert_results(collection, pages[1:2])

    assert await collection.count_documents({"batch_id": batch_id}) == 3
    assert len(await finished_indexes(collection, batch_id)) == 30
    assert await count_results(collection, batch_id) == (30, 0)
    assert [r.line_index for r in await _all(collection, batch_id, ok=True)] == list(range(30))


async def test_the_same_line_in_two_pages_counts_once_and_the_first_page_wins(mongo_db) -> None:
    collection = mongo_db["batch_results"]
    batch_id = _batch()
    # Written first, but its first line is later: it loses line 5 to the page below.
    await store_results(collection, batch_id, [_failed(5, "late copy"), _ok(6), _ok(7)], NOW)
    await store_results(collection, batch_id, [_ok(i, b"early") for i in range(6)], NOW)

    assert len(await finished_indexes(collection, batch_id)) == 8
    assert await finished_indexes(collection, batch_id) == set(range(8))
    assert await count_results(collection, batch_id) == (8, 0)
    ok = await _all(collection, batch_id, ok=True)
    assert [r.line_index for r in ok] == list(range(8))
    assert ok[5].body == b"early"
    assert await _all(collection, batch_id, ok=False) == []


async def test_between_pages_with_the_same_first_line_the_lower_id_wins(mongo_db) -> None:
    collection = mongo_db["batch_results"]
    batch_id = _batch()
    # A flush replayed after a crash: same lines, a fresh token, one copy failed this time.
    a = build_pages(batch_id, [_ok(0), _ok(1)], NOW)
    b = build_pages(batch_id, [_ok(0), _failed(1)], NOW)
    await insert_results(collection, a + b)
    first_is_a = a[0]["_id"] < b[0]["_id"]

    assert len(await finished_indexes(collection, batch_id)) == 2
    assert await count_results(collection, batch_id) == ((2, 0) if first_is_a else (1, 1))
    ok = [r.line_index for r in await _all(collection, batch_id, ok=True)]
    failed = [r.line_index for r in await _all(collection, batch_id, ok=False)]
    assert (ok, failed) == (([0, 1], []) if first_is_a else ([0], [1]))


async def test_a_crash_like_duplicate_keeps_finished_lines_and_counts_distinct(mongo_db) -> None:
    collection = mongo_db["batch_results"]
    batch_id = _batch()
    async with CheckpointWriter(collection, batch_id, SystemClock(), max_items=16) as writer:
        for i in range(50):
            await writer.add(_failed(i) if i % 7 == 0 else _ok(i))
    # The run crashed before noticing the last write had landed; the resumed one replays it.
    await store_results(
        collection, batch_id, [_failed(i) if i % 7 == 0 else _ok(i) for i in range(40, 60)], NOW
    )

    assert await finished_indexes(collection, batch_id) == set(range(60))
    failed = {i for i in range(60) if i % 7 == 0}
    assert await count_results(collection, batch_id) == (60 - len(failed), len(failed))
    assert [r.line_index for r in await _all(collection, batch_id, ok=False)] == sorted(failed)
    ok = await _all(collection, batch_id, ok=True)
    assert [r.line_index for r in ok] == [i for i in range(60) if i not in failed]
    assert all(r.body == b'{"n": %d}' % r.line_index for r in ok)


async def test_results_come_back_in_input_order_across_out_of_order_pages(mongo_db) -> None:
    collection = mongo_db["batch_results"]
    batch_id = _batch()
    stragglers = {3, 57, 121}
    # Pages of 10 written in a shuffled order; the stragglers land in the last write, with
    # lines far ahead of them, as a retried request does.
    lines = [i for i in range(200) if i not in stragglers]
    chunks = [lines[i : i + 10] for i in range(0, len(lines), 10)]
    chunks = chunks[1::2] + chunks[0::2]
    chunks.append([*stragglers, *range(200, 210)])
    body = bytes(range(256)) * 16  # binary, not UTF-8: stored and read back unchanged
    for chunk in chunks:
        await store_results(
            collection, batch_id, [_failed(i) if i % 10 == 9 else _ok(i, body) for i in chunk], NOW
        )
    expected_ok = [i for i in range(210) if i % 10 != 9]
    expected_failed = [i for i in range(210) if i % 10 == 9]

    counting = _CountingFinds(collection)
    ok = await _all(counting, batch_id, ok=True)
    assert [r.line_index for r in ok] == expected_ok
    assert all(r.body == body and r.custom_id == f"c{r.line_index}" for r in ok)
    assert counting.fetches == len(chunks)  # the default cache: each page fetched once
    failed = await _all(collection, batch_id, ok=False)
    assert [r.line_index for r in failed] == expected_failed
    assert all(r.error_message == "boom" and r.attempts == 3 for r in failed)

    # A cache smaller than one page still yields everything in order, refetching.
    tiny = _CountingFinds(collection)
    ok = await _all(tiny, batch_id, ok=True, cache_bytes=1)
    assert [r.line_index for r in ok] == expected_ok
    assert tiny.fetches > len(chunks)
    assert await count_results(collection, batch_id) == (len(expected_ok), len(expected_failed))


async def test_a_large_write_is_split_into_pages_by_count_and_size(mongo_db) -> None:
    collection = mongo_db["batch_results"]
    batch_id = _batch()
    big = b"x" * (1024 * 1024)
    results = [_ok(i, big) for i in range(9)] + [_ok(i) for i in range(9, 30)]
    pages = build_pages(batch_id, results[::-1], NOW, max_items=20, max_bytes=3 * len(big) + 10_000)
    sizes = [len(unpack_lines(p["lines"])) for p in pages]
    assert sizes == [3, 3, 20, 4], sizes  # three 1 MB bodies fill a page, 20 results do
    assert [p["first_line"] for p in pages] == [0, 3, 6, 26]
    await insert_results(collection, pages)
    ok = await _all(collection, batch_id, ok=True)
    assert [r.line_index for r in ok] == list(range(30))
    assert [len(r.body or b"") for r in ok[:9]] == [len(big)] * 9


async def test_the_writer_stores_one_page_per_write(mongo_db) -> None:
    collection = mongo_db["batch_results"]
    batch_id = _batch()
    async with CheckpointWriter(collection, batch_id, SystemClock()) as writer:
        for i in range(300):
            await writer.add(_ok(i))
    assert writer.written == 300 and writer.pages == writer.writes
    assert await collection.count_documents({"batch_id": batch_id}) == writer.pages
    assert writer.pages <= 3, writer.pages
    assert len(await finished_indexes(collection, batch_id)) == 300


class _CountingFinds:
    """The real collection, counting the page fetches `iter_results` makes."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.fetches = 0

    def find(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.find(*args, **kwargs)

    async def find_one(self, *args: Any, **kwargs: Any) -> Any:
        self.fetches += 1
        return await self.real.find_one(*args, **kwargs)


async def test_results_stored_per_request_before_pages_are_upgraded_in_place(mongo_db) -> None:
    """A batch in progress across the upgrade keeps what it finished: nothing is sent again."""
    collection = mongo_db["batch_results"]
    await collection.create_indexes(RESULT_INDEXES)
    batch_id = _batch()
    # The shape the agent wrote before pages: one document per finished request.
    legacy = [
        {
            "_id": f"{batch_id}:{i}",
            "batch_id": batch_id,
            "line_index": i,
            "custom_id": f"c{i}",
            "ok": i % 4 != 0,
            "attempts": 1 if i % 4 else 3,
            "finished_at": NOW,
            **(
                {"status_code": 200, "request_id": f"r{i}", "body": b'{"n": %d}' % i}
                if i % 4
                else {"error_code": "request_failed", "error_message": "boom"}
            ),
        }
        for i in range(0, 1200, 2)  # every other line finished
    ]
    await collection.insert_many(legacy)
    await store_results(collection, batch_id, [_ok(1)], NOW)  # a page already written after it

    assert await upgrade_legacy_results(collection, NOW) == 600
    assert (
        await collection.count_documents({"batch_id": batch_id, "line_index": {"$exists": 1}}) == 0
    )
    assert await finished_indexes(collection, batch_id) == {1, *range(0, 1200, 2)}
    assert await count_results(collection, batch_id) == (301, 300)
    ok = await _all(collection, batch_id, ok=True)
    assert ok[:3] == [_ok(1), _ok(2), _ok(6)]
    failed = await _all(collection, batch_id, ok=False)
    assert failed[0] == _failed(0)
    assert [r.line_index for r in failed] == list(range(0, 1200, 4))
    # Idempotent: nothing left to move.
    assert await upgrade_legacy_results(collection, NOW) == 0


class _HeldWrites:
    """The real collection, whose inserts wait until `release` (a slow database), recording
    the pages each write stored."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.open = asyncio.Event()
        self.pages: list[dict[str, Any]] = []

    async def insert_many(self, docs: list[dict[str, Any]], **kwargs: Any) -> Any:
        await self.open.wait()
        self.pages.extend(docs)
        return await self.real.insert_many(docs, **kwargs)


async def test_answers_awaiting_their_checkpoint_are_bounded_in_bytes(mongo_db) -> None:
    """The wait was bounded by count only: 64 answers of 1 MiB each piled up, unstored,
    while the database was slow. Past the byte bound `add` pauses dispatch instead."""
    collection = _HeldWrites(mongo_db["batch_results"])
    batch_id = _batch()
    mib = 1024 * 1024
    bound = 8 * mib
    body = b'"' + b"x" * (mib - 2) + b'"'
    added: list[int] = []
    writer = CheckpointWriter(
        collection, batch_id, SystemClock(), max_pending=256, max_pending_bytes=bound
    )

    async def burst() -> None:
        for i in range(64):
            await writer.add(_ok(i, body))
            added.append(i)

    async with writer:
        adding = asyncio.create_task(burst())
        try:
            # The database holds every write: dispatch runs until the writer makes it wait.
            await wait_until(lambda: adding.done() or writer.paused, 10, message="add paused")
            stored = sum(len(unpack_lines(p["lines"])) for p in collection.pages)
            unstored_bytes = (len(added) - stored) * len(body)
        finally:
            collection.open.set()
        await adding
    assert unstored_bytes <= bound + len(body), f"{len(added)} answers of 1 MiB were unstored"
    # Every line recorded exactly once, in pages under MongoDB's document limit.
    assert writer.written == 64
    assert sorted(i for p in collection.pages for i in unpack_lines(p["lines"])) == list(range(64))
    assert max(len(bson.encode(p)) for p in collection.pages) < 16 * mib
    assert await count_results(mongo_db["batch_results"], batch_id) == (64, 0)
    assert writer.peak_unstored_bytes <= bound + len(body)


async def test_results_sent_by_prefix_group_read_back_in_input_order_in_bounded_reads(
    mongo_db,
) -> None:
    """Pages written in prefix-group order hold lines spread over the whole input: reading them
    back in input order costs a bounded number of page fetches, not one per line."""
    collection = mongo_db["batch_results"]
    batch_id = _batch()
    groups, lines = 40, 1000
    body = b"x" * 1000
    # A shuffled batch sent grouped: group g holds lines g, g+40, ...; one page per write.
    for group in range(groups):
        chunk = [_ok(i, body) for i in range(group, lines, groups)]
        await store_results(collection, batch_id, chunk, NOW)
    budget = 200_000  # about 8 of the 40 pages
    counting = _CountingFinds(collection)
    ok = await _all(counting, batch_id, ok=True, cache_bytes=budget)
    assert [r.line_index for r in ok] == list(range(lines))
    assert all(r.body == body for r in ok)
    ranges = -(-lines * (len(body) + 60) // budget)
    assert counting.fetches <= (ranges + 1) * groups, counting.fetches  # LRU: ~one per line
