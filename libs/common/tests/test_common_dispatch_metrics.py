"""DispatchObserver: batched metric updates add up to what one-at-a-time observing gives."""

from __future__ import annotations

import asyncio

from neobatch.common.metrics import (
    DISPATCHED_REQUESTS,
    REQUEST_LATENCY,
    DispatchObserver,
    timed_dispatch,
)


def _histogram() -> dict[str, float]:
    return {
        f"{s.name}{s.labels}": s.value
        for metric in REQUEST_LATENCY.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def _counts() -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for metric in DISPATCHED_REQUESTS.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }


def test_batched_observations_match_one_at_a_time() -> None:
    latencies = [0.001, 0.005, 0.02, 0.02, 0.3, 5.0, 200.0]
    before_h, before_c = _histogram(), _counts()
    for latency in latencies:
        REQUEST_LATENCY.observe(latency)
    DISPATCHED_REQUESTS.labels(outcome="ok").inc(len(latencies) - 1)
    DISPATCHED_REQUESTS.labels(outcome="error").inc()
    single_h, single_c = _histogram(), _counts()
    observer = DispatchObserver(flush_every=3)
    for n, latency in enumerate(latencies):
        observer.observe(latency, ok=n != 0)
    observer.flush()
    batched_h, batched_c = _histogram(), _counts()
    for key, value in single_h.items():
        assert batched_h[key] - value == value - before_h.get(key, 0.0), key
    for key, value in single_c.items():
        assert batched_c[key] - value == value - before_c.get(key, 0.0), key


def test_timed_dispatch_with_an_observer_counts_on_flush() -> None:
    class Result:
        ok = True

    async def send(request: int) -> Result:
        return Result()

    observer = DispatchObserver(flush_every=1000)
    before = _counts().get("ok", 0.0)
    wrapped = timed_dispatch(send, observer)

    async def run() -> None:
        for n in range(5):
            await wrapped(n)

    asyncio.run(run())
    assert _counts().get("ok", 0.0) == before  # not yet: batched
    observer.flush()
    assert _counts()["ok"] == before + 5
