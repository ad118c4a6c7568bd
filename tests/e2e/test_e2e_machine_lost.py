"""End to end: a machine deleted behind our back mid-run is replaced and the batch resumes.

The whole stack (four service processes) with PROVISIONER=runpod against the RunPod simulator,
the runtime-agent running the engine simulator over SSH on the simulated pod. The simulator's
admin API deletes the pod while requests are being dispatched: its SSH host stops and its engine
dies with it. The resource-manager's reconciler notices (`provision.lost`), the planner asks for
a replacement (attempt 2), the agent moves the batch there and resumes from its checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from neobatch.runtime_agent.results.pages import unpack_lines
from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until

REQUESTS = 300
CONCURRENCY = 16
LATENCY_MS = 250  # 300 requests, 16 in flight: about 4.7 s of dispatch on one machine


class LostMachineStack:
    def __init__(self, stack: Stack, sim_port: int) -> None:
        self.stack = stack
        self.admin = f"http://127.0.0.1:{sim_port}/_sim"
        self.console = ConsoleClient.for_stack(stack)
        self.model_id = self.console.ensure_model()
        self.mongo: MongoClient[dict[str, Any]] = MongoClient(stack.mongo_url)
        self.db = self.mongo[stack.env["NEOBATCH_DB"]]

    def close(self) -> None:
        self.console.close()
        self.mongo.close()

    def machines(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.admin}/state", timeout=10).json()["machines"])

    def delete_machine(self, machine_id: str) -> None:
        httpx.post(f"{self.admin}/machines/{machine_id}/delete", timeout=10).raise_for_status()

    def submit(self, name: str, requests: int, latency_ms: float) -> str:
        job = self.console.sim_job(self.model_id, name, requests, latency_ms=latency_ms)
        return str(job["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return self.console.job(job_id)

    def finished_lines(self, batch_id: str) -> int:
        pages = self.db.batch_results.find({"batch_id": batch_id}, {"lines": 1})
        return len({line for page in pages for line in unpack_lines(page["lines"])})

    def provisions(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.db.provisions.find({"job_id": job_id}).sort("_id", 1))

    def dispatched(self) -> dict[str, float]:
        """The runtime-agent's count of requests sent to an engine, by outcome."""
        text = httpx.get(f"{self.stack.health_url('runtime-agent')}/metrics", timeout=10).text
        counts = {"ok": 0.0, "error": 0.0}
        for outcome, value in re.findall(
            r'^neobatch_dispatch_requests_total\{outcome="(\w+)"\} (\S+)$', text, re.M
        ):
            counts[outcome] = float(value)
        return counts

    async def lose_machine_mid_run(self, job_id: str) -> tuple[dict[str, Any], int]:
        """Wait until some requests finished, delete the job's machine; (machine, lines done)."""

        def running() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["request_counts"]["completed"] > 0 else None

        job = await wait_until(running, 60, interval=0.05, message="some requests completed")
        assert job["status"] == "in_progress", job
        (machine,) = self.machines()
        self.delete_machine(machine["id"])
        # Whatever is checkpointed once the machine is gone finished before the loss.
        return machine, self.finished_lines(job["batch_id"])

    async def wait_settled(self, job_id: str, timeout_seconds: float) -> dict[str, Any]:
        """Terminal, its provision released, and the simulator holding no machine."""

        def settled() -> dict[str, Any] | None:
            job = self.job(job_id)
            released = (job.get("provision") or {}).get("status") == "released"
            ended = job["status"] in {"completed", "failed", "resource_failed", "cancelled"}
            return job if ended and released and not self.machines() else None

        return await wait_until(settled, timeout_seconds, interval=0.1, message="job settled")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LostMachineStack]:
    sim_port = free_port()
    env = {
        "NEOBATCH_DB": "e2e_machine_lost",
        "PROVISIONER": "runpod",
        "NEOBATCH_SIM_TIME_FACTOR": "0.01",
        "NEOBATCH_RUNPOD_SIM_PORT": str(sim_port),
        # The reconciler describes running machines this often: a deleted pod is noticed fast.
        "NEOBATCH_RECONCILE_SECONDS": "0.5",
        # The agent gives an unreachable machine up quickly (it reconnects in place until then).
        "NEOBATCH_SSH_READY_TIMEOUT_SECONDS": "5",
        "NEOBATCH_SSH_CONNECT_TIMEOUT_SECONDS": "2",
        "NEOBATCH_DISPATCH_CONCURRENCY": str(CONCURRENCY),
        "NEOBATCH_RUNNER_POLL_SECONDS": "1",
    }
    stack = start_stack(tmp_path_factory.mktemp("stack-lost"), Ports.free(), env)
    try:
        cloud = LostMachineStack(stack, sim_port)
        try:
            yield cloud
        finally:
            cloud.close()
    finally:
        stack.stop()


async def test_lost_machine_is_replaced_and_the_batch_resumes(cloud: LostMachineStack) -> None:
    before = cloud.dispatched()
    job_id = cloud.submit("lost-then-replaced", REQUESTS, LATENCY_MS)
    machine, done_before_loss = await cloud.lose_machine_mid_run(job_id)
    assert 0 < done_before_loss < REQUESTS

    job = await cloud.wait_settled(job_id, 75)
    assert job["status"] == "completed", job
    assert job["request_counts"] == {"total": REQUESTS, "completed": REQUESTS, "failed": 0}

    # provision.lost for the first machine, a replacement asked for as attempt 2.
    first, second = cloud.provisions(job_id)
    assert first["_id"].endswith("_1") and second["_id"].endswith("_2")
    assert first["status"] == "released"
    assert first["provider_resource_id"] == machine["id"]
    # The reconciler found it gone: lost (with the machine named) before it was released.
    assert first["error_code"] == "MachineLost" and first.get("lost_at") is not None
    assert machine["id"] in first["error_message"]
    assert second["status"] == "released"
    assert second["provider_resource_id"] != machine["id"]
    assert job["provision_id"] == second["_id"]

    # Every line exactly once, each the engine's answer.
    output = cloud.console.file_lines(job["output_dataset"])
    ids = [line["custom_id"] for line in output]
    assert sorted(ids) == sorted(f"request-{i}" for i in range(1, REQUESTS + 1))
    assert all(line["response"]["status_code"] == 200 for line in output)

    # Lines checkpointed before the loss were not sent again: beyond one pass over the input,
    # only what was in flight when the machine vanished may have been answered twice.
    after = cloud.dispatched()
    answered = after["ok"] - before["ok"]
    assert REQUESTS <= answered <= REQUESTS + CONCURRENCY, (answered, done_before_loss)
    resent = after["error"] - before["error"]
    assert resent <= 2 * CONCURRENCY, resent

    # The simulator holds no live machine (checked by wait_settled): the lost one terminated,
    # the replacement released.
    assert cloud.machines() == []


async def test_lost_machine_with_no_attempt_left_fails_the_job_keeping_its_results(
    cloud: LostMachineStack,
) -> None:
    cloud.stack.env["NEOBATCH_MAX_PROVISION_ATTEMPTS"] = "1"
    cloud.stack.restart("planner")
    try:
        job_id = cloud.submit("lost-for-good", REQUESTS, LATENCY_MS)
        machine, done_before_loss = await cloud.lose_machine_mid_run(job_id)
        job = await cloud.wait_settled(job_id, 60)
    finally:
        del cloud.stack.env["NEOBATCH_MAX_PROVISION_ATTEMPTS"]
        cloud.stack.restart("planner")
    assert job["status"] == "failed", job
    # The reason names the provision and the machine that was lost; no replacement was asked.
    (provision,) = cloud.provisions(job_id)
    assert provision["status"] == "released"
    assert job["error_message"].startswith("machine_lost:"), job["error_message"]
    assert provision["_id"] in job["error_message"] and machine["id"] in job["error_message"]
    # What finished before the loss is kept (checkpointed; the agent writes it into the output
    # file when it gives the batch up, and the planner then attaches that file to the job).
    assert cloud.finished_lines(job["batch_id"]) >= done_before_loss > 0
