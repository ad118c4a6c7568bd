"""One batch end to end through all four services, each its own process, on the local stack.

Real nats-server, a real Mongo-wire server, the loopback SSH host and the engine simulator
launched over SSH by the runtime-agent — exactly what `./task up` runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from neobatch.sim.devstack import Ports, Stack, marked_pids, start_stack
from neobatch.sim.devstack.demo import Demo, template_body
from neobatch.sim.devstack.sample_batch import write_sample_batch
from neobatch.sim.engine import expected_body
from neobatch.sim.testing.servers import free_port, port_in_use

TERMINAL = {"completed", "failed", "expired", "cancelled", "resource_failed", "submit_failed"}
REQUESTS = 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("stack")
    with start_stack(run_dir, Ports.free(), {"NEOBATCH_DB": "e2e"}) as started:
        yield started


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.console_url, headers=headers, timeout=30) as c:
        yield c


def wait_for_job(client: httpx.Client, job_id: str, timeout_seconds: float) -> dict:
    deadline = time.monotonic() + timeout_seconds
    while True:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL and (job.get("provision") or {}).get("status") == "released":
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not finish with its machine released: {job}")
        time.sleep(0.2)


def test_batch_runs_to_completed_and_the_machine_is_released(
    stack: Stack, client: httpx.Client, tmp_path: Path
) -> None:
    demo = Demo(
        client,
        stack.console_url,
        stack.api_key,
        out=lambda _line: None,
        operator_key=stack.operator_key,
    )
    model_id = demo.ensure_model()
    engine_port = free_port()
    template = template_body(model_id, engine_port)
    template["name"] = "e2e-template"
    created = client.post(
        f"/api/v1/models/{model_id}/deployment-templates", json=template, headers=demo.operator
    )
    assert created.status_code == 200, created.text

    batch = tmp_path / "input.jsonl"
    write_sample_batch(batch, REQUESTS, model="sim-chat-1b")
    file_id = demo.upload(batch)
    job = client.post(
        "/api/v1/jobs",
        json={
            "input_dataset": file_id,
            "endpoint": "/v1/chat/completions",
            "model_id": model_id,
            "model_template_name": "e2e-template",
        },
    ).json()
    assert job["status"] == "queued"

    started = time.monotonic()
    job = wait_for_job(client, job["id"], timeout_seconds=180)
    elapsed = time.monotonic() - started
    print(f"\n{REQUESTS}-request batch: queued → completed and released in {elapsed:.1f}s")

    assert job["status"] == "completed", job.get("error_message")
    assert job["request_counts"] == {"total": REQUESTS, "completed": REQUESTS, "failed": 0}
    seen = [event["id"] for event in job["events"]]
    for step in ("queued", "resource_preparing", "submitting", "in_progress", "completed"):
        assert step in seen

    output = client.get(f"/api/v1/files/{job['output_dataset']}/content")
    assert output.status_code == 200
    lines = [json.loads(line) for line in output.text.splitlines() if line.strip()]
    requests = {
        json.loads(line)["custom_id"]: json.loads(line) for line in batch.read_text().splitlines()
    }
    assert sorted(line["custom_id"] for line in lines) == sorted(requests)
    for line in lines:
        sent = requests[line["custom_id"]]
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"] == expected_body(sent["url"], sent["body"])

    # The engine was stopped: nothing listens on its port, and the only processes left that
    # this stack started are the stack's own components.
    assert not port_in_use(engine_port)
    component_pids = {handle.pid for handle in stack.processes.values()}
    leftovers = set(marked_pids(stack.run_dir)) - component_pids
    assert leftovers == set(), f"processes left running: {leftovers}"
