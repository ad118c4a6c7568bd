"""Reading checkpoint pages back (their format: `pages`), the first stored copy of a line winning.

Reading back is two passes so memory stays bounded by a cache, not by the batch: the first
reads only the small `lines`/`failed` arrays and maps each line to its winning page; the
second walks the lines in input order, fetching page blobs by `_id` into an LRU bounded by
bytes, each dropped once its last line is yielded (pages are nearly in line order, so almost
every lookup hits; a straggler, a retried request stored in a much later page, costs one
extra fetch at most).
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from neobatch.runtime_agent.dispatch.tally import RequestResult
from neobatch.runtime_agent.results.pages import FIND_BATCH_SIZE, RESULTS_DECODER, unpack_lines

# Bytes of page blobs the second read pass keeps decoded (a few pages).
READ_CACHE_BYTES = 16 * 1024 * 1024
_ORDER = [("first_line", ASCENDING), ("_id", ASCENDING)]
_LINES_FIELDS = {"lines": 1, "failed": 1}
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
    for result in RESULTS_DECODER.decode(blob):
        if result.ok == ok:
            by_line.setdefault(result.line_index, result)
    return by_line, len(blob)
