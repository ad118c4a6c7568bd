"""ChunkFeed: the requests one machine run sends, slice by slice from the chunks it holds.

A run goes through the chunks it already holds (a run taking over its machine), then claims
the first chunk nobody holds, then steals the unstarted tail of the chunk with the most work
left (`chunks`); when none is left it is `exhausted` and the machine has no work left. Lines
are reserved a slice at a time (`MachineStore.reserve`), so a thief never takes a line that
was sent. A freed chunk (`dirty`) is re-run from its first line, skipping the lines that have
a result. A chunk is marked done once no unstarted line is left in it and every line this run
sent from it has its result stored (`stored`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from neobatch.common.batch_input import BatchRequest, is_blank, parse_request, strip_bom
from neobatch.runtime_agent.batch.store import BatchStore

Document = dict[str, Any]
# Claim-or-steal rounds before a run with chunks still unclaimed around it gives up.
CLAIM_ROUNDS = 5


class _LineReader:
    """Lines of the input by index, read forward; a jump back reads the file again."""

    def __init__(self, store: BatchStore, file_id: str) -> None:
        self._store = store
        self._file_id = file_id
        self._lines: AsyncIterator[bytes] | None = None
        self._next = 0

    async def lines(self, start: int, stop: int) -> AsyncIterator[tuple[int, bytes]]:
        if self._lines is None or start < self._next:
            await self.close()
            self._lines, self._next = aiter(self._store.input_lines(self._file_id)), 0
        while self._next < stop:
            raw = await anext(self._lines, None)
            if raw is None:
                return
            index, self._next = self._next, self._next + 1
            if index >= start:
                yield index, raw

    async def close(self) -> None:
        if self._lines is not None:
            lines, self._lines = self._lines, None
            await lines.aclose()  # type: ignore[attr-defined]


class ChunkFeed:
    def __init__(
        self,
        store: BatchStore,
        batch_id: str,
        input_file_id: str,
        machine_id: str,
        token: str,
        slice_lines: Callable[[], int],
    ) -> None:
        self._store = store
        self._machines = store.machines
        self._batch_id = batch_id
        self._mid = machine_id
        self._token = token
        self._slice = slice_lines
        self._reader = _LineReader(store, input_file_id)
        # Line -> the chunk it was sent from, until its result is stored.
        self.line_chunk: dict[int, str] = {}
        self._outstanding: dict[str, int] = {}
        # Chunks with no unstarted line left for us.
        self._drained: set[str] = set()
        self.exhausted = False
        self.chunks_claimed = 0
        self.chunks_stolen = 0

    async def _next_chunk(self, held: list[Document]) -> Document | None:
        if held:
            return held.pop(0)
        for _ in range(CLAIM_ROUNDS):
            chunk = await self._machines.claim_chunk(self._batch_id, self._mid, self._token)
            if chunk is not None:
                self.chunks_claimed += 1
                return chunk
            chunk = await self._machines.steal(self._batch_id, self._mid, self._token)
            if chunk is not None:
                self.chunks_stolen += 1
                return chunk
            # Nothing claimed or stolen: done, unless a chunk nobody holds is there (lost
            # to another claimer's race, or freed just now): then look again.
            if not await self._machines.has_unclaimed(self._batch_id):
                return None
        return None

    async def requests(self) -> AsyncIterator[BatchRequest]:
        held = await self._machines.held_chunks(self._mid, self._token)
        chunk: Document | None = None
        skip: set[int] = set()
        # The next slice of the current chunk, reserved while this one is sent: a reservation
        # is a database round trip that dispatch would otherwise wait for.
        ahead: asyncio.Task[tuple[int, int] | None] | None = None
        try:
            while True:
                if chunk is None:
                    chunk = await self._next_chunk(held)
                    if chunk is None:
                        self.exhausted = True
                        return
                    skip = await self._finished_in(chunk) if chunk.get("dirty") else set()
                chunk_id = chunk["_id"]
                if ahead is not None:
                    span, ahead = await ahead, None
                else:
                    span = await self._machines.reserve(chunk, self._token, self._slice())
                if span is None or span[0] == span[1]:
                    if span is not None:
                        self._drained.add(chunk_id)
                        await self._finish_if_stored(chunk_id)
                    chunk = None
                    continue
                ahead = asyncio.create_task(
                    self._machines.reserve(chunk, self._token, self._slice())
                )
                async for index, raw in self._reader.lines(*span):
                    raw = strip_bom(raw, index)
                    if index in skip or is_blank(raw):
                        continue
                    self.line_chunk[index] = chunk_id
                    self._outstanding[chunk_id] = self._outstanding.get(chunk_id, 0) + 1
                    yield parse_request(raw, index)
        finally:
            if ahead is not None:
                # Lines reserved and not sent stay in our chunk: a run that stops early has
                # its chunks taken back (or freed) and re-run from their first line.
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
            await self._reader.close()

    async def _finished_in(self, chunk: Document) -> set[int]:
        done = await self._store.finished_lines(self._batch_id)
        return {line for line in done if chunk["first"] <= line < chunk["end"]}

    def chunks_of(self, lines: list[int]) -> dict[str, tuple[str, int]]:
        """Chunk id -> (our token, how many of `lines`) for the lines about to be stored."""
        found: dict[str, tuple[str, int]] = {}
        for line in lines:
            chunk_id = self.line_chunk[line]
            found[chunk_id] = (self._token, found.get(chunk_id, (self._token, 0))[1] + 1)
        return found

    async def stored(self, lines: list[int]) -> None:
        """These lines' results are stored: a drained chunk with nothing in flight is done."""
        touched = set()
        for line in lines:
            chunk_id = self.line_chunk.pop(line, None)
            if chunk_id is not None:
                self._outstanding[chunk_id] -= 1
                touched.add(chunk_id)
        for chunk_id in touched:
            await self._finish_if_stored(chunk_id)

    def forget(self, chunk_id: str) -> list[int]:
        """The chunk is no longer ours: its lines in flight will not be stored by us."""
        lines = [line for line, owner in self.line_chunk.items() if owner == chunk_id]
        for line in lines:
            del self.line_chunk[line]
        self._outstanding.pop(chunk_id, None)
        self._drained.discard(chunk_id)
        return lines

    async def _finish_if_stored(self, chunk_id: str) -> None:
        if chunk_id in self._drained and self._outstanding.get(chunk_id, 0) == 0:
            await self._machines.finish_chunk(chunk_id, self._token)
            self._drained.discard(chunk_id)
