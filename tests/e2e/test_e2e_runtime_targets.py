"""Each runtime target end to end: the whole stack with PROVISIONER=runpod,lambdaCloud, both
provider simulators as processes, templates WITHOUT an `engine.command`, so the agent really runs
`vllm serve` in the RunPod pod and `sudo docker run` of the template's image on the Lambda VM
(the simulated machines' tools start the engine simulator and record each command), plus a Lambda
VM without Docker or without the NVIDIA runtime ending `submit_failed` with a clear reason.
Every machine is released at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from neobatch.sim.devstack import Ports, start_stack
from neobatch.sim.devstack.scenario import ENDPOINT, MODEL, ConsoleClient, batch_lines
from neobatch.sim.testing.servers import free_port

REQUESTS = 12
SETTLE_SECONDS = 60


class Clouds:
    def __init__(self, console: ConsoleClient, sim_ports: dict[str, int]) -> None:
        self.console = console
        self.admin = {name: f"http://127.0.0.1:{port}/_sim" for name, port in sim_ports.items()}
        self.model_id = console.ensure_model()

    def sim(self, provider: str, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, self.admin[provider] + path, json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def commands(self, provider: str, tool: str) -> list[list[str]]:
        records = self.sim(provider, "GET", "/commands")["commands"]
        return [r["argv"] for r in records if r["tool"] == tool]

    def template(self, name: str, engine: dict[str, Any], **spec: Any) -> None:
        body = {
            "name": name,
            "version": "v1.0.0",
            "spec": {
                "engine": {"type": "vllm", "ready_timeout_seconds": 30, **engine},
                "model_source": {"type": "huggingface", "uri": "org/sim-chat-1b"},
                "accelerator": {"type": "H100", "count": 1},
                "supported_endpoints": [ENDPOINT],
                **spec,
            },
        }
        self.console.create_template(self.model_id, body)

    def run_job(self, template: str, provider: str) -> dict[str, Any]:
        file_id = self.console.upload(batch_lines(REQUESTS))
        job = self.console.create_job(file_id, self.model_id, template, provider=provider)
        settled = self.console.wait_settled(job["id"], SETTLE_SECONDS)
        deadline = time.monotonic() + 10
        while self.sim(provider, "GET", "/state")["machines"]:
            assert time.monotonic() < deadline, f"{provider} machine left running: {settled}"
            time.sleep(0.1)
        return settled


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    sim_ports = {"runpod": free_port(), "lambdaCloud": free_port()}
    env = {
        "NEOBATCH_DB": "e2e_runtime_targets",
        "PROVISIONER": "runpod,lambdaCloud",
        "NEOBATCH_SIM_TIME_FACTOR": "0.004",
        "NEOBATCH_RECONCILE_SECONDS": "1",
        "NEOBATCH_RUNPOD_SIM_PORT": str(sim_ports["runpod"]),
        "NEOBATCH_LAMBDA_SIM_PORT": str(sim_ports["lambdaCloud"]),
        "NEOBATCH_LAMBDA_SSH_PORT": str(free_port()),
    }
    stack = start_stack(tmp_path_factory.mktemp("stack-targets"), Ports.free(), env)
    console = ConsoleClient.for_stack(stack)
    try:
        yield Clouds(console, sim_ports)
    finally:
        console.close()
        stack.stop()


def _assert_output(clouds: Clouds, job: dict[str, Any]) -> None:
    assert job["status"] == "completed", (job.get("error_code"), job.get("error_message"))
    assert job["request_counts"]["completed"] == REQUESTS
    output = clouds.console.file_lines(job["output_dataset"])
    assert sorted(line["custom_id"] for line in output) == sorted(
        line["custom_id"] for line in batch_lines(REQUESTS)
    )
    assert all(line["response"]["status_code"] == 200 for line in output)


def test_runpod_runs_vllm_serve_in_the_pod(clouds: Clouds) -> None:
    port = free_port()
    clouds.template(
        "rt-runpod-vllm",
        {"port": port, "serve_args": ["--max-model-len", "4096"]},
        engine_args={"gpu_memory_utilization": 0.85},
        parallelism={"tp": 2},
    )
    job = clouds.run_job("rt-runpod-vllm", "runpod")
    _assert_output(clouds, job)
    assert clouds.commands("runpod", "vllm") == [
        [
            "vllm", "serve", "org/sim-chat-1b", "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", MODEL, "--max-model-len", "4096",
            "--gpu-memory-utilization", "0.85", "--tensor-parallel-size", "2",
            "--enable-prefix-caching", "--enable-prompt-tokens-details", "--disable-uvicorn-access-log",
        ]
    ]  # fmt: skip


def test_lambda_runs_the_image_with_docker_on_the_vm(clouds: Clouds) -> None:
    port = free_port()
    clouds.template("rt-lambda-docker", {"port": port, "image": "vllm/vllm-openai:v0.9.1"})
    job = clouds.run_job("rt-lambda-docker", "lambdaCloud")
    _assert_output(clouds, job)
    docker = clouds.commands("lambdaCloud", "docker")
    runs = [argv for argv in docker if argv[1] == "run"]
    assert len(runs) == 1
    name = f"neobatch-{job['batch_id']}"
    assert runs[0][:5] == ["docker", "run", "-d", "--name", name]
    assert runs[0][5:] == [
        "--gpus", "all", "--ipc=host", "-p", f"127.0.0.1:{port}:8000", "vllm/vllm-openai:v0.9.1",
        "--model", "org/sim-chat-1b", "--served-model-name", MODEL,
        "--host", "0.0.0.0", "--port", "8000",
        "--enable-prefix-caching", "--enable-prompt-tokens-details", "--disable-uvicorn-access-log",
    ]  # fmt: skip
    # Checked first (Docker and its NVIDIA runtime), removed at the end.
    assert docker.index(["docker", "info", "--format", "{{json .Runtimes}}"]) < docker.index(
        runs[0]
    )
    assert ["docker", "rm", "-f", name] in docker[docker.index(runs[0]) :]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("no_docker", "docker is not installed on the machine"),
        ("no_nvidia_runtime", "the NVIDIA container runtime is missing"),
    ],
)
def test_lambda_vm_without_docker_or_nvidia_is_submit_failed(
    clouds: Clouds, fault: str, reason: str
) -> None:
    clouds.template(f"rt-lambda-{fault}", {"port": free_port(), "image": "vllm/vllm-openai:x"})
    clouds.sim("lambdaCloud", "POST", "/faults", {fault: True})
    try:
        job = clouds.run_job(f"rt-lambda-{fault}", "lambdaCloud")
    finally:
        clouds.sim("lambdaCloud", "POST", "/faults", {fault: False})
    assert job["status"] == "submit_failed", job
    assert job["error_code"] == "engine_launch_failed"
    assert job["error_message"].startswith(reason)
    assert job["provision"]["status"] == "released"
