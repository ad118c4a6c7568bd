"""End to end, issue 15: one batch on many machines from two providers.

The whole stack (four service processes) with PROVISIONER=runpod,lambdaCloud and both cloud
simulators. RunPod is left with room for two H100s, so a job asking for four machines gets two
from RunPod and the rest from Lambda (each provision the cheapest fitting offer at that moment,
providers in their configured order). The RunPod simulator deletes one machine mid-run and the
runtime-agent is SIGKILLed (and started again); the batch completes on the others (and a
replacement), each custom_id once, and every machine is released, none kept after the batch's
work ran out (the simulators' own billing records).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient, stuck_job_report
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until

REQUESTS = 1600
CONCURRENCY = 8
LATENCY_MS = 200  # 8 in flight per machine: 40 requests/s each, 10 s on four machines
ENDED = {"completed", "failed", "expired", "cancelled", "resource_failed", "submit_failed"}
# A machine's release is asked the moment its work ran out and confirmed by the provider soon
# after: what "not leased after its work ran out" allows (seconds).
RELEASE_SLACK_SECONDS = 5
# A killed agent's open transaction lasts up to the server's 60 s lifetime; then a new machine
# may have to come up for the work it held.
TAKEOVER_SETTLE_SECONDS = 150


class Clouds:
    def __init__(self, stack: Stack, runpod_port: int, lambda_port: int) -> None:
        self.stack = stack
        self.admins = {
            "runpod": f"http://127.0.0.1:{runpod_port}/_sim",
            "lambdaCloud": f"http://127.0.0.1:{lambda_port}/_sim",
        }
        self.console = ConsoleClient.for_stack(stack)
        self.model_id = self.console.ensure_model()
        self.mongo: MongoClient[dict[str, Any]] = MongoClient(stack.mongo_url)
        self.db = self.mongo[stack.env["NEOBATCH_DB"]]

    def close(self) -> None:
        self.console.close()
        self.mongo.close()

    def state(self, provider: str) -> dict[str, Any]:
        return dict(httpx.get(f"{self.admins[provider]}/state", timeout=10).json())

    def live_machines(self) -> dict[str, list[dict[str, Any]]]:
        return {provider: self.state(provider)["machines"] for provider in self.admins}

    def billing(self) -> list[dict[str, Any]]:
        records = []
        for provider, admin in self.admins.items():
            for record in httpx.get(f"{admin}/billing", timeout=10).json()["machines"]:
                records.append({**record, "provider": provider})
        return records

    def delete_a_machine(self, provider: str) -> dict[str, Any]:
        """The simulator deletes one of its live machines behind our back."""
        machine = self.state(provider)["machines"][0]
        url = f"{self.admins[provider]}/machines/{machine['id']}/delete"
        httpx.post(url, timeout=10).raise_for_status()
        return dict(machine)

    def leave_runpod_room_for(self, machines: int) -> None:
        """Every RunPod H100 sold out but `machines` of its cheapest H100 offer."""
        capacity = self.state("runpod")["capacity"]
        for entry in capacity:
            free = 0
            if (entry["gpu"], entry["region"]) == ("NVIDIA H100 PCIe", "EU-RO-1"):
                free = machines
            elif "H100" not in entry["gpu"]:
                continue
            body = {"gpu": entry["gpu"], "region": entry["region"], "free": free}
            url = f"{self.admins['runpod']}/capacity"
            httpx.post(url, json=body, timeout=10).raise_for_status()

    def submit(self, name: str, replicas: int, requests: int = REQUESTS) -> dict[str, Any]:
        return self.console.sim_job(
            self.model_id,
            name,
            requests,
            latency_ms=LATENCY_MS,
            job_fields={"resource_request": {"replicas": replicas}},
        )

    def provisions(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.db.provisions.find({"job_id": job_id}).sort("_id", 1))

    async def wait_machines_running(self, job_id: str, count: int) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            job = self.console.job(job_id)
            enough = job["machines"]["running"] >= count
            return job if enough and job["request_counts"]["completed"] > 0 else None

        return await wait_until(running, 60, interval=0.1, message=f"{count} machines running")

    async def wait_settled(self, job_id: str, timeout_seconds: float = 90) -> dict[str, Any]:
        """Terminal, every provision of the job ended, and no live machine at either simulator."""

        def settled() -> dict[str, Any] | None:
            job = self.console.job(job_id)
            ended = all(p["status"] in ("released", "failed") for p in job["machines"]["items"])
            live = [m for ms in self.live_machines().values() for m in ms]
            return job if job["status"] in ENDED and ended and not live else None

        try:
            return await wait_until(settled, timeout_seconds, interval=0.2, message="job settled")
        except AssertionError as stuck:
            live = self.live_machines()
            report = stuck_job_report(self.stack, self.console, job_id)
            raise AssertionError(f"{stuck}\nlive machines: {live}\n{report}") from None


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    runpod_port, lambda_port = free_port(), free_port()
    env = {
        "NEOBATCH_DB": "e2e_many_machines",
        "PROVISIONER": "runpod,lambdaCloud",
        "NEOBATCH_SIM_TIME_FACTOR": "0.01",
        "NEOBATCH_RUNPOD_SIM_PORT": str(runpod_port),
        "NEOBATCH_LAMBDA_SIM_PORT": str(lambda_port),
        "NEOBATCH_LAMBDA_SSH_PORT": str(free_port()),
        # A deleted machine is noticed fast, and the agent gives an unreachable one up quickly.
        "NEOBATCH_RECONCILE_SECONDS": "0.5",
        "NEOBATCH_SSH_READY_TIMEOUT_SECONDS": "5",
        "NEOBATCH_SSH_CONNECT_TIMEOUT_SECONDS": "2",
        "NEOBATCH_DISPATCH_CONCURRENCY": str(CONCURRENCY),
        "NEOBATCH_RUNNER_POLL_SECONDS": "0.5",
        # A killed agent's leases expire quickly, and the restarted one looks for them often.
        "NEOBATCH_BATCH_LEASE_SECONDS": "3",
    }
    stack = start_stack(tmp_path_factory.mktemp("stack-many"), Ports.free(), env)
    try:
        clouds = Clouds(stack, runpod_port, lambda_port)
        try:
            yield clouds
        finally:
            clouds.close()
    finally:
        stack.stop()


def test_replicas_above_the_operator_maximum_is_a_400(clouds: Clouds) -> None:
    file_id = clouds.console.upload(
        [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}]
    )
    body = {
        "input_dataset": file_id,
        "endpoint": "/v1/chat/completions",
        "model_id": clouds.model_id,
        "resource_request": {"replicas": 17},
    }
    r = clouds.console.http.post("/api/v1/jobs", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "replicas_above_maximum"


async def test_four_machines_from_two_providers_one_lost_and_the_agent_killed(
    clouds: Clouds,
) -> None:
    clouds.leave_runpod_room_for(2)
    job = clouds.submit("many-machines", replicas=4)
    job_id = job["id"]
    running = await clouds.wait_machines_running(job_id, 4)
    providers = [m["provider"] for m in running["machines"]["items"] if m["status"] == "running"]
    assert sorted(providers) == ["lambdaCloud", "lambdaCloud", "runpod", "runpod"], (
        [
            (p["provider"], p["status"], (p.get("offer") or {}).get("region"), p.get("attempts"))
            for p in clouds.provisions(job_id)
        ],
        [c for c in clouds.state("runpod")["capacity"] if "H100" in c["gpu"]],
        len(clouds.state("runpod")["machines"]),
    )

    # The RunPod simulator deletes one of its machines mid-run.
    victim = clouds.delete_a_machine("runpod")
    # And the agent is SIGKILLed: a new instance takes the machines' runs over.
    clouds.stack.kill("runtime-agent")
    clouds.stack.restart("runtime-agent")

    # The kill may land inside a transaction: the server then holds what it wrote (the lost
    # machine's chunk, say) until its 60 s transaction lifetime runs out, and the others may
    # all end before that chunk comes back (then a machine is leased for it).
    job = await clouds.wait_settled(job_id, TAKEOVER_SETTLE_SECONDS)
    assert job["status"] == "completed", job.get("error_message")
    assert job["request_counts"] == {"total": REQUESTS, "completed": REQUESTS, "failed": 0}

    # One output file in input order, each custom_id exactly once.
    output = clouds.console.file_lines(job["output_dataset"])
    assert [line["custom_id"] for line in output] == [
        f"request-{i}" for i in range(1, REQUESTS + 1)
    ]
    assert all(line["response"]["status_code"] == 200 for line in output)

    # Every machine released; the job shows each with its provider, price and share.
    machines = job["machines"]
    assert machines["requested"] == 4 and machines["running"] == 0
    items = machines["items"]
    assert len(items) >= 4 and {m["provider"] for m in items} == {"runpod", "lambdaCloud"}
    assert all(m["status"] in ("released", "failed") for m in items), items
    ran = [m for m in items if m["lines"] > 0]
    assert len(ran) >= 3 and all(m["price_per_hour"] and m["gpu_type"] for m in ran), items
    lost = next(
        p for p in clouds.provisions(job_id) if p.get("provider_resource_id") == victim["id"]
    )
    assert lost["error_code"] == "MachineLost"
    # The bill sums every machine that was leased.
    assert len(job["bill"]["machines"]) == sum(
        1 for p in clouds.provisions(job_id) if p.get("leased_at")
    )
    assert job["bill"]["total_usd"] == pytest.approx(
        sum(m["usd"] for m in job["bill"]["machines"]), abs=1e-6
    )

    # The simulators' billing: every machine terminated, none after the batch's work ran out.
    ours = {p.get("provider_resource_id") for p in clouds.provisions(job_id)}
    records = [r for r in clouds.billing() if r["machine"] in ours]
    assert len(records) == len([m for m in items if m["status"] == "released"]), records
    assert all(r["terminated_at"] is not None for r in records), records
    last_answer = job["finalizing_at"]
    late = [r for r in records if r["terminated_at"] > last_answer + RELEASE_SLACK_SECONDS]
    assert not late, (last_answer, late)


async def test_cancel_with_three_machines_releases_all_and_keeps_finished_lines(
    clouds: Clouds,
) -> None:
    clouds.leave_runpod_room_for(3)
    job = clouds.submit("many-cancelled", replicas=3, requests=REQUESTS * 2)
    job_id = job["id"]
    await clouds.wait_machines_running(job_id, 3)
    await wait_until(
        lambda: clouds.console.job(job_id)["request_counts"]["completed"] >= 50 or None,
        30,
        interval=0.1,
        message="some lines finished",
    )
    clouds.console.cancel(job_id)
    job = await clouds.wait_settled(job_id)
    assert job["status"] == "cancelled", job
    assert all(m["status"] in ("released", "failed") for m in job["machines"]["items"])

    finished = clouds.console.file_lines(job["output_dataset"])
    unfinished = clouds.console.file_lines(job["error_dataset"])
    assert len(finished) >= 50
    assert {line["error"]["code"] for line in unfinished} <= {"batch_cancelled"}
    ids = [line["custom_id"] for line in finished + unfinished]
    assert sorted(ids) == sorted(f"request-{i}" for i in range(1, REQUESTS * 2 + 1))
