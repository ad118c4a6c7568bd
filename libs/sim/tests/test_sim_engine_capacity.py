"""The simulator's vLLM-shaped capacity: `max_num_seqs` requests run, the rest wait, and
/metrics reports both as vLLM names them; without it, no vLLM gauges at all."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from neobatch.sim.engine import running_engine

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "queue me"}]}


def gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_requests_beyond_max_num_seqs_wait_and_are_reported() -> None:
    async with (
        running_engine(latency_ms=300, max_num_seqs=4) as engine,
        aiohttp.ClientSession() as session,
    ):

        async def post() -> int:
            async with session.post(engine.url + "/v1/chat/completions", json=CHAT) as resp:
                await resp.read()
                return resp.status

        started = time.monotonic()
        posts = [asyncio.create_task(post()) for _ in range(10)]
        deadline = time.monotonic() + 5
        while True:
            text = await (await session.get(engine.url + "/metrics")).text()
            if gauge(text, "vllm:num_requests_waiting") == 6 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert gauge(text, "vllm:num_requests_running") == 4
        assert gauge(text, "vllm:num_requests_waiting") == 6
        assert gauge(text, "vllm:kv_cache_usage_perc") == 1.0
        assert gauge(text, "vllm:num_preemptions_total") == 0
        assert await asyncio.gather(*posts) == [200] * 10
        # 10 requests, 4 at a time, 0.3 s each: three rounds, not one.
        assert time.monotonic() - started >= 0.85
        text = await (await session.get(engine.url + "/metrics")).text()
        assert gauge(text, "vllm:num_requests_running") == 0
        assert gauge(text, "neobatch_sim_peak_waiting") == 6


async def test_without_max_num_seqs_there_are_no_vllm_gauges() -> None:
    async with running_engine(latency_ms=50) as engine, aiohttp.ClientSession() as session:
        text = await (await session.get(engine.url + "/metrics")).text()
    assert "neobatch_sim_requests_served_total" in text
    assert "vllm:" not in text
