"""Engine simulator: deterministic bodies, error shapes, failure injection, startup delay."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest

from neobatch.sim.engine import compute_response, expected_body, running_engine
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "say hello to the sim"}]}

CASES = [
    ("/v1/chat/completions", CHAT),
    ("/v1/chat/completions", {**CHAT, "n": 3, "max_tokens": 8}),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "no model field"}]}]},
    ),
    ("/v1/completions", {"model": "sim-model", "prompt": "once upon a time"}),
    ("/v1/completions", {"model": "sim-model", "prompt": ["a b", "c d e"], "n": 2}),
    ("/v1/completions", {"model": "sim-model", "prompt": [1, 2, 3, 4]}),
    ("/v1/embeddings", {"model": "sim-model", "input": "embed me"}),
    ("/v1/embeddings", {"model": "sim-model", "input": ["x", "y z"], "dimensions": 8}),
    ("/v1/embeddings", {"model": "sim-model", "input": "b64", "encoding_format": "base64"}),
]


async def _post(session: aiohttp.ClientSession, url: str, body: object) -> tuple[int, dict]:
    async with session.post(url, json=body) as response:
        return response.status, await response.json()


@pytest.mark.parametrize(("path", "body"), CASES)
async def test_replies_equal_expected_body(engine_sim, path: str, body: dict) -> None:
    async with aiohttp.ClientSession() as session:
        status, first = await _post(session, engine_sim.url + path, body)
        _, second = await _post(session, engine_sim.url + path, body)
    assert status == 200
    assert first == expected_body(engine_sim.url + path, body)
    assert second == first
    assert first["model"] == engine_sim.model


async def test_reply_shapes() -> None:
    chat = expected_body("/v1/chat/completions", CHAT)
    assert chat["object"] == "chat.completion"
    assert chat["id"].startswith("chatcmpl-")
    assert chat["choices"][0]["message"]["content"].startswith("sim:")
    assert chat["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    other = expected_body("/v1/chat/completions", {**CHAT, "temperature": 0.5})
    assert other["id"] != chat["id"]  # ids follow the whole request
    assert other["choices"] == chat["choices"]  # content follows the messages
    embedding = expected_body("/v1/embeddings", {"input": ["a", "b"], "dimensions": 4})
    vectors = [item["embedding"] for item in embedding["data"]]
    assert [len(v) for v in vectors] == [4, 4] and vectors[0] != vectors[1]
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-4


async def test_client_errors(engine_sim) -> None:
    url = engine_sim.url + "/v1/chat/completions"
    unknown = {**CHAT, "model": "not-served"}
    async with aiohttp.ClientSession() as session:
        status, body = await _post(session, url, unknown)
        assert status == 404
        assert body == expected_body(url, unknown, served_model=engine_sim.model)
        assert body["error"]["message"] == "The model `not-served` does not exist."
        status, body = await _post(session, url, {"model": "sim-model"})
        assert status == 400 and body["error"]["type"] == "BadRequestError"
        async with session.post(url, data=b"{not json") as response:
            assert response.status == 400


async def test_failure_injection_is_deterministic(engine_sim_factory) -> None:
    engine = engine_sim_factory(failure_rate=0.3, seed=7)
    url = engine.url + "/v1/completions"
    bodies = [{"model": engine.model, "prompt": f"request {i}"} for i in range(200)]
    predicted = [
        compute_response(url, b, served_model=engine.model, failure_rate=0.3, seed=7).status
        for b in bodies
    ]
    async with aiohttp.ClientSession() as session:
        first = [(await _post(session, url, b))[0] for b in bodies]
        again = [(await _post(session, url, b))[0] for b in bodies]
        status, failed = await _post(session, url, bodies[predicted.index(500)])
        metrics = await (await session.get(engine.url + "/metrics")).text()
    assert first == predicted == again
    assert set(first) == {200, 500}
    assert 30 <= first.count(500) <= 90  # about 30% of 200
    assert status == 500 and failed["error"]["type"] == "InternalServerError"
    injected = 2 * first.count(500) + 1
    assert f"neobatch_sim_injected_failures_total {injected}" in metrics
    assert f"neobatch_sim_requests_served_total {2 * first.count(200)}" in metrics
    # Another seed picks other requests.
    other_seed = [
        compute_response(url, b, served_model=engine.model, failure_rate=0.3, seed=8).status
        for b in bodies
    ]
    assert other_seed != predicted


async def test_health_503_until_startup_delay_passes() -> None:
    async with (
        running_engine(startup_delay_seconds=0.5) as engine,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(engine.url + "/health") as response:
            assert response.status == 503
        status, _ = await _post(session, engine.url + "/v1/chat/completions", CHAT)
        assert status == 503

        async def healthy() -> bool:
            async with session.get(engine.url + "/health") as response:
                return response.status == 200

        await wait_until(healthy, 5, message="engine health to turn 200")
        status, body = await _post(session, engine.url + "/v1/chat/completions", CHAT)
        assert status == 200 and body == expected_body("/v1/chat/completions", CHAT)


async def test_latency_and_models(engine_sim_factory) -> None:
    engine = engine_sim_factory(model="llama-sim", latency_ms=20)
    body = {**CHAT, "model": "llama-sim"}
    async with aiohttp.ClientSession() as session:
        async with session.get(engine.base_url + "/models") as response:
            models = await response.json()
        status, reply = await _post(session, engine.base_url + "/chat/completions", body)
    assert [m["id"] for m in models["data"]] == ["llama-sim"]
    assert status == 200 and reply == expected_body("/v1/chat/completions", body)


def _chat(system: str, question: str) -> dict:
    return {
        "model": "sim-model",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
    }


async def test_prefix_cache_reports_cached_tokens_like_vllm() -> None:
    system = " ".join(f"rule{i}" for i in range(40))  # 40 words: two full 16-word blocks
    url = "/v1/chat/completions"
    async with (
        running_engine(prefix_caching=True, prompt_tokens_details=True) as engine,
        aiohttp.ClientSession() as session,
    ):
        _, first = await _post(session, engine.url + url, _chat(system, "what now"))
        _, second = await _post(session, engine.url + url, _chat(system, "and then what"))
        _, other = await _post(session, engine.url + url, _chat("a different prompt " * 8, "x"))
        # The same prompt again: everything but the last token could be cached; whole blocks.
        _, same = await _post(session, engine.url + url, _chat("w " * 31, "end"))
        _, again = await _post(session, engine.url + url, _chat("w " * 31, "end"))
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    assert second["usage"]["prompt_tokens"] == 43
    assert other["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert same["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert again["usage"]["prompt_tokens_details"] == {"cached_tokens": 16}  # 32 = all tokens
    # Without the switch the body is exactly the deterministic one (no details).
    async with running_engine() as plain, aiohttp.ClientSession() as session:
        _, body = await _post(session, plain.url + url, _chat(system, "what now"))
    assert body == expected_body(url, _chat(system, "what now"))
    assert "prompt_tokens_details" not in body["usage"]


def test_the_vllm_shim_passes_the_cache_switches_to_the_simulator() -> None:
    from neobatch.sim.machine_tools.vllm import engine_argv

    cfg = {"python": "py"}
    argv = engine_argv(
        cfg,
        9000,
        ["org/m", "--enable-prefix-caching", "--enable-prompt-tokens-details", "--port", "9000"],
    )
    assert isinstance(argv, list)
    assert argv[argv.index("--model") :] == [
        "--model", "org/m", "--enable-prefix-caching", "--enable-prompt-tokens-details",
    ]  # fmt: skip
    plain = engine_argv(cfg, 9000, ["org/m", "--no-enable-prefix-caching", "--port", "9000"])
    assert isinstance(plain, list) and plain[plain.index("--model") :] == ["--model", "org/m"]


def test_fail_at_start_prints_a_vllm_start_up_failure_and_exits_1() -> None:
    reason = "ValueError: Available memory on node 0 (9.4/13.59 GiB) is too little"
    done = subprocess.run(
        [sys.executable, "-m", "neobatch.sim.engine", "--port", "1", "--fail-at-start", reason],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert any(line.endswith(f"] {reason}") for line in lines)  # logged as vLLM ERROR lines
    assert any(line.endswith(f") {reason}") for line in lines)  # and the engine core's traceback
    assert "See root cause above" in lines[-1]  # the API server's wrapper comes last, as in vLLM


async def test_exit_after_answers_n_requests_then_dies_like_a_crashed_vllm(tmp_path) -> None:
    port, once = free_port(), tmp_path / "crashed"
    argv = [sys.executable, "-m", "neobatch.sim.engine", "--port", str(port)]
    argv += ["--exit-after", "2", "--exit-once-file", str(once)]
    engine = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(up, 30, message="the engine to serve")
            for _ in range(2):
                async with session.post(url, json=body) as resp:
                    assert resp.status == 200
            with pytest.raises(aiohttp.ClientError):  # the third finds it dying: no answer
                async with session.post(url, json=body) as resp:
                    await resp.read()
        _, stderr = await asyncio.wait_for(engine.communicate(), 30)
    finally:
        if engine.returncode is None:
            engine.kill()
            await engine.wait()
    assert engine.returncode == 1 and once.exists()
    crash = "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert any(line.endswith(f"] {crash}") for line in stderr.decode().splitlines())
