"""Dispatch policy: retries, backoff, counts, and the concurrency/stop rules of dispatch_all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from neobatch.common.batch_input import BatchRequest
from neobatch.runtime_agent.dispatch.policy import RetryPolicy
from neobatch.runtime_agent.dispatch.pool import DispatchSummary, after_grace, dispatch_all
from neobatch.runtime_agent.dispatch.tally import RequestResult, Tally


@pytest.mark.parametrize(
    ("attempts", "status", "retry"),
    [
        (1, None, True),
        (1, 429, True),
        (1, 500, True),
        (1, 503, True),
        (1, 408, True),
        (1, 400, False),
        (1, 404, False),
        (1, 200, False),
        (5, 429, True),
        (6, 429, False),
        (6, None, False),
    ],
)
def test_should_retry(attempts: int, status: int | None, retry: bool) -> None:
    assert RetryPolicy(max_retries=5).should_retry(attempts, status) is retry


def test_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(base_delay_seconds=0.5, max_delay_seconds=5.0)
    assert [policy.delay_seconds(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay_seconds(3, jitter=0.5) == 1.0


@pytest.mark.parametrize(
    ("status", "error_code", "ok"),
    [
        (200, "", True),
        (201, "", True),
        (200, "invalid_response", False),
        (500, "", False),
        (None, "x", False),
    ],
)
def test_result_ok(status: int | None, error_code: str, ok: bool) -> None:
    result = RequestResult(line_index=0, custom_id="a", status_code=status, error_code=error_code)
    assert result.ok is ok


def test_tally_is_capped_by_total() -> None:
    tally = Tally(total=2, completed=2, failed=1)
    assert tally.counts().completed == 2 and tally.counts().failed == 0


async def _requests(n: int) -> AsyncIterator[BatchRequest]:
    for i in range(n):
        yield BatchRequest(line_index=i, custom_id=f"r{i}", method="POST", url="/v1/x", body={})


async def test_dispatch_all_bounds_concurrency_and_sends_each_once() -> None:
    in_flight = peak = 0
    results: list[RequestResult] = []

    async def send(request: BatchRequest) -> RequestResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return RequestResult(
            line_index=request.line_index, custom_id=request.custom_id, status_code=200
        )

    async def record(result: RequestResult) -> None:
        results.append(result)

    summary = await dispatch_all(
        _requests(200), send, record, concurrency=8, should_stop=lambda: False
    )
    assert summary.sent == 200 and not summary.stopped
    assert peak == 8
    assert sorted(r.line_index for r in results) == list(range(200))


async def test_dispatch_all_stops_between_requests_and_lets_in_flight_finish() -> None:
    results: list[RequestResult] = []
    stop = False

    async def send(request: BatchRequest) -> RequestResult:
        await asyncio.sleep(0.001)
        return RequestResult(
            line_index=request.line_index, custom_id=request.custom_id, status_code=200
        )

    async def record(result: RequestResult) -> None:
        nonlocal stop
        results.append(result)
        stop = len(results) >= 10

    summary = await dispatch_all(
        _requests(1000), send, record, concurrency=4, should_stop=lambda: stop
    )
    assert summary.stopped
    # Every request that was started was recorded; at most one per worker after the stop.
    assert summary.sent == len(results) and 10 <= len(results) < 10 + 4


async def test_requests_still_hanging_after_the_grace_are_abandoned_unrecorded() -> None:
    """A cancel: answered requests are kept, the hung ones are cut once the grace is over (a
    hung request must not hold a rented machine for its whole request timeout), and a result
    being recorded at that moment is never cut."""
    interrupted = asyncio.Event()
    recorded: list[int] = []
    recording = asyncio.Event()
    release_recorder = asyncio.Event()

    async def send(request: BatchRequest) -> RequestResult:
        if request.line_index >= 2:
            await asyncio.Event().wait()  # hangs until cut
        return RequestResult(
            line_index=request.line_index, custom_id=request.custom_id, status_code=200
        )

    async def record(result: RequestResult) -> None:
        if result.line_index == 1:
            recording.set()
            await release_recorder.wait()  # the abandon comes while this one is stored
        recorded.append(result.line_index)

    async def interrupt_while_one_is_recorded() -> None:
        await recording.wait()
        interrupted.set()

    async def abandon() -> None:
        await after_grace(interrupted, 0.05)

    async def recorder_released_after_abandon() -> None:
        await interrupted.wait()
        await asyncio.sleep(0.2)  # past the grace: the abandon has happened
        release_recorder.set()

    helpers = [
        asyncio.create_task(interrupt_while_one_is_recorded()),
        asyncio.create_task(recorder_released_after_abandon()),
    ]
    summary = await asyncio.wait_for(
        dispatch_all(
            _requests(100),
            send,
            record,
            concurrency=6,
            should_stop=interrupted.is_set,
            abandon_in_flight=abandon,
        ),
        timeout=10,
    )
    await asyncio.gather(*helpers)
    assert sorted(recorded) == [0, 1]
    # Every request sent is either recorded or abandoned: the 4+ hung ones are cut.
    assert summary.stopped and summary.abandoned >= 4
    assert summary.sent == len(recorded) + summary.abandoned


async def test_without_an_interrupt_nothing_is_abandoned() -> None:
    async def send(request: BatchRequest) -> RequestResult:
        await asyncio.sleep(0.001)
        return RequestResult(
            line_index=request.line_index, custom_id=request.custom_id, status_code=200
        )

    recorded: list[int] = []

    async def record(result: RequestResult) -> None:
        recorded.append(result.line_index)

    summary = await dispatch_all(
        _requests(50),
        send,
        record,
        concurrency=4,
        should_stop=lambda: False,
        abandon_in_flight=lambda: after_grace(asyncio.Event(), 0),
    )
    assert summary == DispatchSummary(sent=50, stopped=False, abandoned=0)
    assert sorted(recorded) == list(range(50))


async def test_dispatch_all_propagates_a_failing_recorder() -> None:
    async def send(request: BatchRequest) -> RequestResult:
        return RequestResult(
            line_index=request.line_index, custom_id=request.custom_id, status_code=200
        )

    async def record(result: RequestResult) -> None:
        raise RuntimeError("database gone")

    with pytest.raises(ExceptionGroup):
        await dispatch_all(_requests(10), send, record, concurrency=2, should_stop=lambda: False)


def test_a_raw_body_naming_the_served_model_is_sent_as_written() -> None:
    import msgspec

    from neobatch.common.batch_input import parse_request
    from neobatch.runtime_agent.engine.client import encode_body

    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/x/", "body": {"model": "m", "n": 1}}'
    request = parse_request(line, 0)
    assert request.url == "/v1/x" and request.custom_id == "a"
    assert isinstance(request.body, msgspec.Raw)
    assert encode_body(request.body, "m") == b'{"model": "m", "n": 1}'
    # Another model (or none) is re-addressed to the served one, as for a decoded body.
    assert msgspec.json.decode(encode_body(request.body, "served")) == {"model": "served", "n": 1}
    no_model = parse_request(b'{"custom_id":"b","url":"/v1/x","body":{"n":2}}', 1).body
    assert msgspec.json.decode(encode_body(no_model, "m")) == {"n": 2, "model": "m"}
    assert encode_body({"model": "m", "n": 1}, "m") == b'{"model":"m","n":1}'


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        (b'{"a": [1, "x", null]}', True),
        (b"[1]", True),
        ('{"a": "é"}'.encode(), True),
        (b'{"a":', False),
        (b"", False),
        (b"not json", False),
        (b'{"a":1} x', False),
        (b'{"a": "\xff"}', False),
        (b'"\\q"', False),
    ],
)
def test_replies_are_checked_to_be_json_without_building_them(raw: bytes, valid: bool) -> None:
    from neobatch.runtime_agent.engine.client import is_json

    assert is_json(raw) is valid
