"""Checkpoints never throttle a real engine: vLLM with 256 in flight answers in waves (a whole
batch of sequences finishes on the same step), about 500 a second here; a database that takes
half a second per write (a loaded machine) must not pause dispatch for more than 1% of
the requests. The writer is configured as a dispatch pass configures it."""

from __future__ import annotations

import asyncio
from typing import Any

from neobatch.common.clock import SystemClock
from neobatch.runtime_agent.dispatch.tally import RequestResult
from neobatch.runtime_agent.results.writer import CheckpointWriter, pending_limit

WAVE, WAVES, WAVE_SECONDS, WRITE_SECONDS = 128, 20, 0.25, 0.5
BODY = b'{"id":"x","choices":[{"message":{"content":"' + b"w " * 60 + b'"}}]}'


class SlowCollection:
    """insert_many that takes WRITE_SECONDS, like a busy MongoDB."""

    def __init__(self) -> None:
        self.inserted = 0

    async def insert_many(self, docs: list[Any], ordered: bool = False) -> None:
        await asyncio.sleep(WRITE_SECONDS)
        self.inserted += len(docs)


async def test_waves_of_answers_at_256_in_flight_pause_under_one_percent() -> None:
    collection = SlowCollection()
    writer = CheckpointWriter(
        collection,  # type: ignore[arg-type]
        "batch_waves",
        SystemClock(),
        max_pending=pending_limit(256),
        flush_interval_seconds=0.025,
    )
    index = 0
    async with writer:
        for _ in range(WAVES):
            adds = []
            for _ in range(WAVE):
                result = RequestResult(
                    line_index=index, custom_id=f"c{index}", status_code=200, body=BODY
                )
                adds.append(asyncio.create_task(writer.add(result)))
                index += 1
            await asyncio.sleep(WAVE_SECONDS)
            await asyncio.gather(*adds)
    total = WAVE * WAVES
    print(f"\n{writer.paused} pauses for {total} results in {writer.writes} writes")
    assert writer.written == total
    assert writer.paused < 0.01 * total


async def test_large_answers_waiting_to_be_stored_are_bounded_by_bytes() -> None:
    gate = asyncio.Event()

    class Gated(SlowCollection):
        async def insert_many(self, docs: list[Any], ordered: bool = False) -> None:
            await gate.wait()
            self.inserted += len(docs)

    writer = CheckpointWriter(
        Gated(),  # type: ignore[arg-type]
        "batch_bytes",
        SystemClock(),
        max_pending=pending_limit(256),
        max_pending_bytes=1000,
    )
    big = b'"' + b"x" * 400 + b'"'
    async with writer:
        first = [
            RequestResult(line_index=i, custom_id=f"c{i}", status_code=200, body=big)
            for i in range(2)
        ]
        for result in first:  # 804 bytes waiting: under the bound
            await asyncio.wait_for(writer.add(result), 1)
        third = asyncio.create_task(
            writer.add(RequestResult(line_index=2, custom_id="c2", status_code=200, body=big))
        )
        await asyncio.sleep(0.1)
        assert not third.done() and writer.paused == 1  # 1,206 bytes: this slot waits
        gate.set()
        await asyncio.wait_for(third, 5)
    assert writer.written == 3
