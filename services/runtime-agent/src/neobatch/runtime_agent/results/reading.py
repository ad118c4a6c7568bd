"""Reading checkpoint pages back (their format: `pages`), the first stored copy of a line winning.

Reading back is two passes so memory stays bounded by a budget, not by the batch: the first
reads only the small `lines`/`failed`/`bytes` fields and maps each line to its winning page;
the second walks the lines in input order in ranges whose results weigh about the budget, each
range fetching once every page that holds one of its lines and keeping only the range's
results. Pages are written in dispatch order: in input order (prefix order off, or no shared
prefixes) a page belongs to one or two ranges and is fetched about once; a shuffled batch sent
by prefix group spreads every page over the whole input, and each range fetches them again, so
the reads grow with (results / budget) x results, never with the number of lines, and never
holding more than the budget and one page.
"""

from __future__ import annotations

from array import array
from collections.abc import AsyncIterator
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from neobatch.runtime_agent.dispatch.tally import RequestResult
from neobatch.runtime_agent.results.pages import (
    FIND_BATCH_SIZE,
    PAGE_BYTES,
    RESULTS_DECODER,
    unpack_lines,
)

# Bytes of page blobs the second read pass keeps decoded (a few pages).
READ_CACHE_BYTES = 16 * 1024 * 1024
_ORDER = [("first_line", ASCENDING), ("_id", ASCENDING)]
_LINES_FIELDS = {"lines": 1, "failed": 1, "bytes": 1}
# What a page stored before pages recorded their size counts as: a full one.
_UNKNOWN_PAGE_BYTES = PAGE_BYTES
_LINES_ONLY = {"lines": 1, "_id": 0}
Document = dict[str, Any]


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
        # Per page: the bytes one of its results weighs, on average.
        self.line_bytes = array("d")

    def add(self, page_id: str, lines: array[int], failed: array[int], size: int) -> None:
        number = len(self.page_ids)
        self.page_ids.append(page_id)
        self.line_bytes.append(size / max(1, len(lines)))
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
        size = int(doc.get("bytes") or _UNKNOWN_PAGE_BYTES)
        winners.add(doc["_id"], unpack_lines(doc["lines"]), unpack_lines(doc["failed"]), size)
    return winners


async def finished_indexes(collection: AsyncCollection[Document], batch_id: str) -> set[int]:
    """Line indexes of requests already finished: a resumed run skips them."""
    done: set[int] = set()
    cursor = collection.find({"batch_id": batch_id}, _LINES_ONLY)
    async for doc in cursor.batch_size(FIND_BATCH_SIZE):
        done.update(unpack_lines(doc["lines"]))
    return done


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

    Holds the line -> page map (pass 1), the results of one range of lines (about
    `cache_bytes`, at least one line) and the page being read, however large the batch.
    """
    winners = await _winners(collection, batch_id)
    want = 0 if ok else 1
    page_of, failed, line_bytes = winners.page, winners.failed, winners.line_bytes
    lines = len(page_of)
    start = 0
    while start < lines:
        end, weight = start, 0.0
        pages: set[int] = set()
        while end < lines:
            number = page_of[end]
            if number >= 0 and failed[end] == want:
                if pages and weight + line_bytes[number] > cache_bytes:
                    break
                weight += line_bytes[number]
                pages.add(number)
            end += 1
        found: dict[int, RequestResult] = {}
        for number in sorted(pages):
            by_line, _ = await _fetch_page(collection, winners.page_ids[number], ok)
            for line, result in by_line.items():
                if start <= line < end and page_of[line] == number:
                    found[line] = result
        for line in range(start, end):
            if page_of[line] >= 0 and failed[line] == want:
                yield found.pop(line)
        start = end


async def _fetch_page(
    collection: AsyncCollection[Document], page_id: str, ok: bool
) -> tuple[dict[int, RequestResult], int]:
    doc = await collection.find_one({"_id": page_id}, {"results": 1, "_id": 0})
    if doc is None:
        raise RuntimeError(f"checkpoint page {page_id} disappeared while being read")
    blob: bytes = doc["results"]
    by_line: dict[int, RequestResult] = {}
    for result in RESULTS_DECODER.decode(blob):
        if result.ok == ok:
            by_line.setdefault(result.line_index, result)
    return by_line, len(blob)
