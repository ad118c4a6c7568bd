"""Reading the engine's /metrics never fails a batch: a hanging, oversized, missing or garbled
answer is "no sample" within a deadline; polls that keep failing hand control to AIMD."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from neobatch.runtime_agent.dispatch.concurrency import Outcome
from neobatch.runtime_agent.dispatch.engine_load import EngineLoad, EngineLoadController
from neobatch.runtime_agent.engine.metrics import MAX_METRICS_BYTES, EngineMetrics

GOOD = "vllm:num_requests_running 7\nvllm:num_requests_waiting 2\n"


@pytest.fixture
async def engine() -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A server whose /metrics does what `mode["now"]` says."""
    mode = {"now": "good"}

    async def metrics(request: web.Request) -> web.StreamResponse:
        now = mode["now"]
        if now == "hang":
            await asyncio.sleep(3)
        if now == "huge":
            return web.Response(text="# x\n" * (MAX_METRICS_BYTES // 4 + 10))
        if now == "missing":
            return web.Response(status=404, text="Not Found")
        if now == "garbage":
            return web.Response(text="<html>hello</html>")
        return web.Response(text=GOOD)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", mode
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("mode", ["hang", "huge", "missing", "garbage"])
async def test_a_bad_answer_is_no_sample_within_the_deadline(engine, mode: str) -> None:
    url, state = engine
    metrics = EngineMetrics(url, timeout_seconds=0.5)
    try:
        assert await metrics.read() == EngineLoad(running=7, waiting=2)
        state["now"] = mode
        started = time.monotonic()
        assert await metrics.read() is None
        assert time.monotonic() - started < 2
        state["now"] = "good"  # and the next poll works again
        assert await metrics.read() == EngineLoad(running=7, waiting=2)
    finally:
        await metrics.close()


async def test_polls_that_keep_failing_hand_control_to_aimd(engine) -> None:
    url, state = engine
    metrics = EngineMetrics(url, timeout_seconds=0.2)
    controller = EngineLoadController(capacity=8, maximum=64, target_waiting=2)
    try:
        await asyncio.wait_for(metrics.feed(controller, interval_seconds=0.01), 1)
    except TimeoutError:
        pass
    assert controller.name == "engine_load" and controller.samples > 0
    state["now"] = "missing"
    await asyncio.wait_for(metrics.feed(controller, interval_seconds=0.01, stale_polls=3), 5)
    assert controller.name == "engine_load->aimd"
    limit = controller.limit
    controller.record(Outcome(429, 0.1))
    assert controller.limit < limit
    await metrics.close()
