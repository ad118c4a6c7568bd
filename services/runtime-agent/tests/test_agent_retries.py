"""Retries against a real loopback engine simulator with injected faults: 429 with
`Retry-After`, hangs past the per-request timeout, transient 500s, transport errors; what a
permanent failure looks like in the error file; the simulator's request log; and progress
reported while no request finishes."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from neobatch.common.batch_input import BatchRequest
from neobatch.common.clock import SystemClock
from neobatch.common.contracts import BatchStatus
from neobatch.runtime_agent.dispatch.concurrency import AimdController
from neobatch.runtime_agent.dispatch.policy import RetryPolicy, parse_retry_after
from neobatch.runtime_agent.dispatch.tally import RequestResult
from neobatch.runtime_agent.engine.client import EngineClient
from neobatch.runtime_agent.results.output_files import render_line
from neobatch.runtime_agent.results.reading import finished_indexes, iter_results
from neobatch.runtime_agent.results.writer import CheckpointWriter
from neobatch.sim.engine import running_engine
from neobatch.sim.engine.app import attempt_draw
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until

CHAT = "/v1/chat/completions"
BATCH = "batch_retries"
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_retry_after_as_seconds_or_http_date() -> None:
    assert parse_retry_after("3", NOW) == 3.0
    assert parse_retry_after(" 0.5 ", NOW) == 0.5
    later = format_datetime(NOW + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(later, NOW) == 7.0
    earlier = format_datetime(NOW - timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(earlier, NOW) == 0.0
    for bad in (None, "", "soon", "-1", "nan", "inf"):
        assert parse_retry_after(bad, NOW) is None


def test_retry_after_wins_over_backoff_within_a_cap() -> None:
    policy = RetryPolicy(base_delay_seconds=0.5, max_delay_seconds=5.0)
    assert policy.delay_seconds(1, jitter=0.7, retry_after=2.0) == 2.0
    assert policy.delay_seconds(4, retry_after=0.0) == 0.0
    assert policy.delay_seconds(1, retry_after=3600) == 60.0
    assert RetryPolicy(max_delay_seconds=120).delay_seconds(1, retry_after=3600) == 120.0


def _request(index: int) -> BatchRequest:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": f"hi {index}"}]}
    return BatchRequest(line_index=index, custom_id=f"c{index}", method="POST", url=CHAT, body=body)


def _index_where(
    seed: int, first: tuple[float, float], then: tuple[float, float], start: int = 0
) -> int:
    """A line index whose first attempt draws in `first` and second in `then` (the sim's dice)."""
    for index in range(start, 10_000):
        key = f"{BATCH}-{index}"
        a, b = attempt_draw(seed, key, 1), attempt_draw(seed, key, 2)
        if first[0] <= a < first[1] and then[0] <= b < then[1]:
            return index
    raise AssertionError("no such index")


def _client(url: str, *, timeout: float = 5.0, retries: int = 3, **kw: object) -> EngineClient:
    return EngineClient(
        url,
        batch_id=BATCH,
        served_model="sim-model",
        concurrency=8,
        request_timeout_seconds=timeout,
        retry=RetryPolicy(max_retries=retries, base_delay_seconds=0.01, max_delay_seconds=0.05),
        **kw,  # type: ignore[arg-type]
    )


async def _timed_send(client: EngineClient, index: int) -> tuple[RequestResult, float]:
    """Send request `index` once (retries included), then close: (result, seconds it took)."""
    try:
        started = time.monotonic()
        result = await client.send(_request(index))
        return result, time.monotonic() - started
    finally:
        await client.close()


async def test_a_429_is_retried_after_the_servers_retry_after(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    rate = 0.5
    index = _index_where(0, (0, rate), (rate, 1))  # 429 first, then an answer
    controller = AimdController(initial=8, maximum=8)
    async with running_engine(
        failure_mode="attempt", status_429_rate=rate, retry_after_seconds=0.4, request_log=str(log)
    ) as engine:
        result, elapsed = await _timed_send(_client(engine.url, controller=controller), index)
    assert result.ok and result.attempts == 2
    # The server's 0.4 s, not the policy's at most 0.05 s backoff.
    assert 0.4 <= elapsed < 2.0
    assert controller.decreases == 1 and controller.limit < 8
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(x["request_id"], x["attempt"], x["status"]) for x in lines] == [
        (f"{BATCH}-{index}", 1, 429),
        (f"{BATCH}-{index}", 2, 200),
    ]
    assert all(x["delivered"] for x in lines)


async def test_a_request_hanging_past_the_timeout_is_retried() -> None:
    rate = 0.5
    index = _index_where(0, (0, rate), (rate, 1))  # hangs first, then answers
    controller = AimdController(initial=8, maximum=8)
    async with running_engine(failure_mode="attempt", hang_rate=rate, hang_seconds=1) as engine:
        client = _client(engine.url, timeout=0.3, controller=controller)
        result, elapsed = await _timed_send(client, index)
    assert result.ok and result.attempts == 2 and result.status_code == 200
    assert 0.3 <= elapsed < 1.0
    # A timeout is a capacity signal.
    assert controller.decreases == 1


async def test_a_request_that_always_hangs_fails_as_a_timeout() -> None:
    async with running_engine(failure_mode="attempt", hang_rate=1.0, hang_seconds=1) as engine:
        client = _client(engine.url, timeout=0.2, retries=1)
        try:
            result = await client.send(_request(0))
        finally:
            await client.close()
    assert not result.ok and result.status_code is None and result.attempts == 2
    assert result.error_code == "request_timeout" and "0.2s" in result.error_message
    line = json.loads(render_line(BATCH, result))
    assert line["response"] is None
    assert line["error"] == {"code": "request_timeout", "message": result.error_message}


async def test_transient_500s_succeed_on_retry_and_fail_for_good_without_retries() -> None:
    rate = 0.5
    index = _index_where(0, (0, rate), (rate, 1))
    async with running_engine(failure_mode="attempt", failure_rate=rate) as engine:
        retrying = _client(engine.url, retries=2)
        no_retries = _client(engine.url, retries=0)
        try:
            again = _index_where(0, (0, rate), (0, 1), start=index + 1)
            permanent = await no_retries.send(_request(again))
            recovered = await retrying.send(_request(index))
        finally:
            await retrying.close()
            await no_retries.close()
    assert recovered.ok and recovered.attempts == 2
    assert permanent.status_code == 500 and permanent.attempts == 1 and not permanent.ok
    # OpenAI's error-file line for an HTTP error: the status code and the engine's body.
    line = json.loads(render_line(BATCH, permanent))
    assert line["error"] is None and line["custom_id"] == f"c{again}"
    assert line["response"]["status_code"] == 500
    assert line["response"]["request_id"] == f"{BATCH}-{again}"
    assert line["response"]["body"]["error"]["message"] == "simulated engine failure"


async def test_a_connection_refused_is_a_transport_error_in_the_error_file() -> None:
    client = _client(f"http://127.0.0.1:{free_port()}", retries=1)
    try:
        result = await client.send(_request(3))
    finally:
        await client.close()
    assert result.status_code is None and result.attempts == 2
    assert result.error_code == "request_failed"
    line = msgspec.json.decode(render_line(BATCH, result))
    assert line["response"] is None and line["error"]["code"] == "request_failed"


async def test_a_dead_tunnel_is_not_retried_the_request_waits_for_the_resumed_run() -> None:
    client = _client(f"http://127.0.0.1:{free_port()}", retries=5)
    client.tunnel_down = lambda: True
    try:
        result = await client.send(_request(4))
    finally:
        await client.close()
    # One attempt, not six with backoff: the run reconnects and sends it again.
    assert result.status_code is None and result.attempts == 1


async def test_progress_is_reported_while_no_request_finishes(make_harness, agent) -> None:
    harness = await make_harness(dispatch={"concurrency": 4})
    # 3 s of engine start-up (vLLM loading weights), then 4.5 s per request.
    extra = ["--latency-ms", "4500", "--startup-delay-seconds", "3"]
    spec = agent.sim_engine_spec(extra_args=extra)
    event = await harness.submit(agent.chat_lines(4), spec)
    batch = await harness.wait_terminal(event.batch_id, within_seconds=60)
    assert batch.status is BatchStatus.COMPLETED

    events = await harness.events(event.batch_id)
    running = [e for s, e in events if s == "batch.status" and e.status is BatchStatus.IN_PROGRESS]
    # The move to in_progress, then heartbeats although nothing finished for 4.5 s.
    heartbeats = [e for e in running[1:] if e.request_counts.completed == 0]
    assert len(heartbeats) >= 2, running
    # From the move to in_progress on: the engine's start-up is covered too.
    times = [e.occurred_at for e in running]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert gaps and max(gaps) <= 2.0, gaps


@pytest.mark.parametrize("seed", [0, 1])
def test_the_simulators_dice_are_per_request_and_attempt(seed: int) -> None:
    draws = {attempt_draw(seed, f"{BATCH}-{i}", a) for i in range(50) for a in (1, 2, 3)}
    assert len(draws) == 150 and all(0 <= d < 1 for d in draws)
    assert attempt_draw(seed, "x", 1) == attempt_draw(seed, "x", 1)


async def test_results_finishing_together_share_writes(mongo_db) -> None:
    collection = mongo_db["batch_results"]
    batch_id = f"batch_writer_{time.time_ns()}"
    async with CheckpointWriter(collection, batch_id, SystemClock()) as writer:
        await asyncio.gather(*(writer.add(_result(i)) for i in range(300)))
    # Group commit: far fewer writes than results, and every result stored by close().
    assert writer.written == 300 and writer.writes <= 30, writer.writes
    assert await finished_indexes(collection, batch_id) == set(range(300))


async def test_add_pauses_while_more_than_max_pending_wait_to_be_stored(mongo_db) -> None:
    collection = mongo_db["batch_results"]
    batch_id = f"batch_writer_{time.time_ns()}"
    stored: list[tuple[int, int]] = []
    gate = asyncio.Event()
    writer = CheckpointWriter(
        collection,
        batch_id,
        SystemClock(),
        max_pending=4,
        on_stored=lambda ok, bad: stored.append((ok, bad)),
    )
    original = writer._collection
    writer._collection = _Gated(original, gate)  # type: ignore[assignment]
    async with writer:
        for index in range(4):  # up to max_pending: returns at once
            await asyncio.wait_for(writer.add(_result(index)), 1)
        fifth = asyncio.create_task(writer.add(_result(4, ok=False)))
        await asyncio.sleep(0.05)
        assert not fifth.done() and writer.unstored == 5 and stored == []
        gate.set()  # the write goes through: back under the limit
        await asyncio.wait_for(fifth, 5)
        assert writer.paused == 1
    assert writer.unstored == 0 and writer.written == 5
    assert (sum(ok for ok, _ in stored), sum(bad for _, bad in stored)) == (4, 1)
    ok = [r async for r in iter_results(collection, batch_id, ok=True)]
    assert [r.line_index for r in ok] == [0, 1, 2, 3]
    [failed] = [r async for r in iter_results(collection, batch_id, ok=False)]
    assert failed.line_index == 4 and failed.body is None
    assert failed.error_code == "request_failed"


async def test_a_second_write_goes_out_while_the_first_is_on_the_wire(mongo_db) -> None:
    """Two writes in flight, never three: results keep draining while one round trip is slow."""
    collection = mongo_db["batch_results"]
    batch_id = f"batch_writer_{time.time_ns()}"
    gate = asyncio.Event()
    writer = CheckpointWriter(collection, batch_id, SystemClock(), flush_interval_seconds=0)
    gated = _Gated(writer._collection, gate)
    writer._collection = gated  # type: ignore[assignment]
    async with writer:
        try:
            for index in range(2):  # two groups, each written on its own
                await writer.add(_result(index))
                await wait_until(lambda n=index: gated.started == n + 1, 5)
            await writer.add(_result(2))
            # Something that must not happen: give it time to (the check above uses 0.05 s).
            await asyncio.sleep(0.1)
            assert gated.started == 2 and writer.written == 0  # the third waits its turn
        finally:
            gate.set()  # a failed check must not leave close() waiting on the gate
    assert gated.started == 3 and writer.written == 3 and writer.writes == 3
    assert await finished_indexes(collection, batch_id) == {0, 1, 2}


def _result(index: int, *, ok: bool = True) -> RequestResult:
    if ok:
        return RequestResult(line_index=index, custom_id=f"c{index}", status_code=200, body=b"{}")
    return RequestResult(line_index=index, custom_id=f"c{index}", error_code="request_failed")


class _Gated:
    def __init__(self, real: Any, gate: asyncio.Event) -> None:
        self.real = real
        self.gate = gate

        self.started = 0

    async def insert_many(self, docs: Any, ordered: bool = True) -> None:
        self.started += 1
        await self.gate.wait()
        await self.real.insert_many(docs, ordered=ordered)


async def test_a_failed_write_is_raised_by_the_next_add_and_by_close(mongo_db) -> None:
    collection = mongo_db["batch_results"]
    batch_id = f"batch_writer_{time.time_ns()}"
    writer = CheckpointWriter(collection, batch_id, SystemClock())
    bad = RequestResult(line_index=0, custom_id="c0", status_code=200)
    original = writer._collection
    writer._collection = _Refusing(original)  # type: ignore[assignment]
    async with writer:
        await writer.add(bad)  # buffered: the write fails in the background

        async def next_add_raises() -> bool:
            try:
                await writer.add(bad)
            except RuntimeError as exc:
                assert "refused" in str(exc)
                return True
            return False

        await wait_until(next_add_raises, 5, message="an add to raise the failed write")
        writer._collection = original  # a healed database does not hide the lost results
        with pytest.raises(RuntimeError, match="refused"):
            await writer.add(bad)
        with pytest.raises(RuntimeError, match="refused"):
            await writer.close()
    assert await finished_indexes(collection, batch_id) == set()


class _Refusing:
    def __init__(self, real: object) -> None:
        self.real = real

    async def insert_many(self, docs: object, ordered: bool = True) -> None:
        raise RuntimeError("refused")
