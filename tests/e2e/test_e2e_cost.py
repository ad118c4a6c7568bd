"""Issue 16 end to end on the RunPod simulator (four service processes, the engine simulator
with a fixed latency): a quote against the bill of the same job, and a job capped below what
it needs stopping at its cap with its machine released and its lines kept."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.demo import Demo, template_body
from neobatch.sim.devstack.sample_batch import write_sample_batch
from neobatch.sim.devstack.scenario import engine_command
from neobatch.sim.testing.servers import free_port

TERMINAL = {"completed", "failed", "expired", "cancelled", "resource_failed", "submit_failed"}
# Each line waits this long at the engine: a job's length is set by it, not by the machine.
LATENCY_MS = 4000


class Cost:
    def __init__(self, stack: Stack, sim_port: int) -> None:
        self.stack = stack
        self.admin = f"http://127.0.0.1:{sim_port}/_sim"
        self.http = httpx.Client(
            base_url=stack.console_url,
            headers={"Authorization": f"Bearer {stack.api_key}"},
            timeout=30,
        )
        self.demo = Demo(
            self.http,
            stack.console_url,
            stack.api_key,
            out=lambda _line: None,
            operator_key=stack.operator_key,
        )
        self.model_id = self.demo.ensure_model()

    def add_template(self, name: str, latency_ms: float, **spec: Any) -> None:
        template = template_body(self.model_id, free_port())
        template["name"] = name
        template["spec"].update(spec)
        template["spec"]["engine"]["command"] = engine_command(latency_ms=latency_ms)
        created = self.http.post(
            f"/api/v1/models/{self.model_id}/deployment-templates",
            json=template,
            headers=self.demo.operator,
        )
        assert created.status_code == 200, created.text

    def job_body(self, tmp_path: Path, template: str, requests: int, **extra: Any) -> dict:
        batch = tmp_path / f"input-{requests}.jsonl"
        write_sample_batch(batch, requests, model="sim-chat-1b")
        return {
            "input_dataset": self.demo.upload(batch),
            "endpoint": "/v1/chat/completions",
            "model_id": self.model_id,
            "model_template_name": template,
            **extra,
        }

    def run(self, body: dict[str, Any], timeout_seconds: float = 120) -> dict[str, Any]:
        created = self.http.post("/api/v1/jobs", json=body)
        assert created.status_code == 200, created.text
        return self.wait_settled(created.json()["id"], timeout_seconds)

    def wait_settled(self, job_id: str, timeout_seconds: float) -> dict[str, Any]:
        """Terminal, its machine released, the bill final, no machine left at the simulator."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            job = self.http.get(f"/api/v1/jobs/{job_id}").json()
            machines = httpx.get(f"{self.admin}/state", timeout=10).json()["machines"]
            settled = job["status"] in TERMINAL and job["bill"]["final"] and not machines
            if settled and (job["output_dataset"] or job["error_dataset"]):
                return job
            assert time.monotonic() < deadline, f"job {job_id} did not settle: {job}"
            time.sleep(0.2)

    def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        text = self.http.get(f"/api/v1/files/{file_id}/content").text
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cost]:
    sim_port = free_port()
    env = {
        "NEOBATCH_DB": "e2e_cost",
        "PROVISIONER": "runpod",
        "NEOBATCH_SIM_TIME_FACTOR": "0.01",
        "NEOBATCH_RECONCILE_SECONDS": "1",
        "NEOBATCH_RUNPOD_SIM_PORT": str(sim_port),
        "NEOBATCH_BUDGET_STOP_SECONDS": "2",
    }
    stack = start_stack(tmp_path_factory.mktemp("stack-cost"), Ports.free(), env)
    try:
        yield Cost(stack, sim_port)
    finally:
        stack.stop()


def test_the_quote_is_within_25_percent_of_the_bill(cost: Cost, tmp_path: Path) -> None:
    """The first job teaches the template's throughput and output per request; the quote of
    the second (the same input) is then compared with what the second really cost."""
    # The simulated machine's start-up (lease → engine answering), declared as an operator would.
    cost.add_template("quoted", LATENCY_MS, placement={"startup_seconds": 3})
    first = cost.run(cost.job_body(tmp_path, "quoted", 40))
    assert first["status"] == "completed", first.get("error_message")

    body = cost.job_body(tmp_path, "quoted", 40)
    deadline = time.monotonic() + 30  # the resource-manager learns from batch.terminal
    while True:
        quote = cost.http.post("/api/v1/jobs", json={**body, "dry_run": True})
        assert quote.status_code == 200, quote.text
        quote = quote.json()
        if quote["output_tokens_source"] == "learned":
            break
        assert time.monotonic() < deadline, quote
        time.sleep(0.3)
    assert quote["requests"] == 40 and quote["prompt_tokens"] > 0
    assert quote["output_tokens"] == pytest.approx(first["usage"]["output_tokens"], rel=0.05)

    # A bill is wall-clock time; on a shared test machine a run can be frozen for tens of
    # seconds (seen in a local CI run: no log line from any process for 25 s, the bill 53 s
    # against 19 quoted). Such a run is measured again, once; the quote must hold for a run
    # that was not disturbed.
    for attempt in (1, 2):
        second = cost.run(body)
        assert second["status"] == "completed", second.get("error_message")
        offers = {o["offer"]: o for o in quote["offers"]}
        quoted = offers[second["placement"]["offer"]]
        assert quoted["throughput_source"] == "learned"
        billed = second["bill"]["total_usd"]
        print(f"\nattempt {attempt}: quote ${quoted['expected_cost_usd']:.6f} "
              f"({quoted['expected_seconds']} s), bill ${billed:.6f} "
              f"({second['bill']['machine_seconds']} s)")  # fmt: skip
        assert billed > 0
        if abs(quoted["expected_cost_usd"] - billed) <= 0.25 * billed:
            break
    assert abs(quoted["expected_cost_usd"] - billed) <= 0.25 * billed, (quoted, second["bill"])


def test_a_job_capped_below_its_need_stops_at_the_cap(cost: Cost, tmp_path: Path) -> None:
    """The template promises a fast engine (so the quote fits the cap); the engine is slow, so
    the bill reaches the cap mid-batch: the job stops there."""
    cost.add_template(
        "optimistic",
        1000,
        placement={"startup_seconds": 1, "throughput": {"H100": 1_000_000}},
    )
    price = next(
        o["price_per_hour"]
        for o in cost.http.post(
            "/api/v1/jobs",
            json={**cost.job_body(tmp_path, "optimistic", 400), "dry_run": True},
        ).json()["offers"]
    )
    # 25 s of the machine: the bill runs from the lease, so on a loaded machine the engine's
    # start-up (seen at 10 s) must leave some of the cap for answers.
    cap = round(price * 25 / 3600, 6)
    # At most 8 requests in flight of LATENCY_MS each: 400 lines need minutes, the cap 25 s.
    body = cost.job_body(
        tmp_path, "optimistic", 400, max_cost_usd=cap, client={"max_concurrency": 8}
    )
    job = cost.run(body)

    assert job["status"] == "failed" and job["error_code"] == "budget_exceeded", job
    assert job["provision"]["status"] == "released"
    output, errors = cost.lines(job["output_dataset"]), cost.lines(job["error_dataset"])
    assert 0 < len(output) < 400 and len(output) + len(errors) == 400
    assert {line["error"]["code"] for line in errors} == {"budget_exceeded"}
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(f"request-{i}" for i in range(1, 401))  # each once
    bill = job["bill"]
    print(f"\ncap ${cap:.6f}, bill ${bill['total_usd']:.6f} ({bill['machine_seconds']} s)")
    # Stopped at the cap: within the stop's own few seconds of it.
    assert bill["total_usd"] <= cap + price * 3 / 3600, bill
    assert bill["total_usd"] >= cap * 0.5, bill
