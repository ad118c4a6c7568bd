"""Cancel in every phase and expiry, on the local stack with every service its own process.

Each job must end in the right terminal state with its machine released, and whatever
requests had finished must be in its output.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient, batch_lines, sim_engine_template

# Where the runtime-agent keeps a batch's engine (its log, its pid) on the machine: the pool's
# "machines" are this host, so the directory is visible here.
WORK_ROOT = Path("/tmp/neobatch")

POOL_HOSTS = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = Ports.free()
    # One loopback SSH host listed under several users: a pool of four "machines".
    pool = ",".join(f"u{i}@127.0.0.1:{ports.ssh}=H100x8" for i in range(POOL_HOSTS))
    env = {
        "NEOBATCH_DB": "lifecycle",
        "NEOBATCH_SSH_POOL": pool,
        "MAX_CONCURRENT_PROVISIONING": "2",
        "NEOBATCH_DISPATCH_CONCURRENCY": "16",
        # The expiry test's window is seconds long: the local stack leases a machine in one.
        "NEOBATCH_MIN_COMPLETION_WINDOW_SECONDS": "1",
    }
    with start_stack(tmp_path_factory.mktemp("stack"), ports, env) as started:
        yield started


def test_cancel_while_queued_and_while_provisioning(console: ConsoleClient, model_id: str) -> None:
    # No pool host has an A100: these jobs wait for capacity, holding both provisioning slots.
    waiting = [
        console.sim_job(model_id, f"no-capacity-{i}", 3, accelerator_type="A100") for i in range(2)
    ]
    for job in waiting:
        console.wait_job(
            job["id"], lambda j: j["status"] == "resource_preparing", 30, "provisioning"
        )
    queued = console.sim_job(model_id, "behind-the-queue", 3)
    assert console.job(queued["id"])["status"] == "queued"

    console.cancel(queued["id"])
    assert console.wait_settled(queued["id"], 30)["status"] == "cancelled"
    for job in waiting:
        console.cancel(job["id"])
        console.cancel(job["id"])  # repeated cancels are harmless
        ended = console.wait_settled(job["id"], 30)
        assert ended["status"] == "cancelled"
        assert ended["provision"]["status"] == "released"


def test_cancel_while_the_engine_starts(console: ConsoleClient, model_id: str) -> None:
    job = console.sim_job(model_id, "slow-start", 5, startup_delay_seconds=60)
    console.wait_job(job["id"], lambda j: j["status"] == "in_progress", 30, "in progress")
    console.cancel(job["id"])
    ended = console.wait_settled(job["id"], 30)
    assert ended["status"] == "cancelled"
    assert ended["request_counts"]["completed"] == 0
    assert not (WORK_ROOT / ended["batch_id"]).exists()  # the engine's directory went too


def test_cancel_mid_run_keeps_finished_lines(console: ConsoleClient, model_id: str) -> None:
    requests = 400
    job = console.sim_job(model_id, "mid-run", requests, latency_ms=200)
    console.wait_job(
        job["id"], lambda j: j["request_counts"]["completed"] >= 16, 60, "some requests done"
    )
    console.cancel(job["id"])
    ended = console.wait_settled(job["id"], 60)
    assert ended["status"] == "cancelled"
    done = ended["request_counts"]["completed"]
    assert 16 <= done < requests
    assert not (WORK_ROOT / ended["batch_id"]).exists()
    output = console.file_lines(ended["output_dataset"])
    ids = [line["custom_id"] for line in output]
    assert len(ids) == len(set(ids)) == done
    assert all(line["response"]["status_code"] == 200 for line in output)
    # Cancelling a terminal job changes nothing.
    assert console.cancel(job["id"])["status"] == "cancelled"


def test_expiry_keeps_finished_lines_and_marks_the_rest_expired(
    console: ConsoleClient, model_id: str
) -> None:
    requests = 600
    name = "expiring"
    console.create_template(model_id, sim_engine_template(name, model_id, latency_ms=2000))
    file_id = console.upload(batch_lines(requests))
    job = console.create_job(file_id, model_id, name, completion_window="15s")
    ended = console.wait_settled(job["id"], 120)
    assert ended["status"] == "expired"
    output = console.file_lines(ended["output_dataset"])
    errors = console.file_lines(ended["error_dataset"])
    assert output, "requests finished before the deadline must be kept"
    expired = [line for line in errors if (line["error"] or {}).get("code") == "batch_expired"]
    assert expired
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(f"request-{i}" for i in range(1, requests + 1))
    assert not (WORK_ROOT / ended["batch_id"]).exists()


def test_cancel_while_submitting_with_the_agent_down(
    stack: Stack, console: ConsoleClient, model_id: str
) -> None:
    """The batch was handed over but no agent has taken it: cancel must still end cleanly."""
    stack.kill("runtime-agent")
    try:
        job = console.sim_job(model_id, "agent-down", 5)
        console.wait_job(job["id"], lambda j: j["status"] == "submitting", 30, "submitting")
        console.cancel(job["id"])
        console.wait_job(job["id"], lambda j: j["status"] == "cancelling", 30, "cancelling")
    finally:
        stack.restart("runtime-agent")
    ended = console.wait_settled(job["id"], 60)
    assert ended["status"] == "cancelled"


def test_an_engine_that_dies_at_start_says_why(console: ConsoleClient, model_id: str) -> None:
    """The job's error is the engine's own last error line, in the AIBrix job view and in the
    OpenAI batch's `errors`; nothing of the batch is left on the machine (issue 14)."""
    reason = (
        "ValueError: Available memory on node 0 (9.4/13.59 GiB) on startup is less than "
        "desired CPU memory utilization (0.92, 12.5 GiB)"
    )

    def failing(template: dict[str, Any]) -> None:
        template["spec"]["engine"]["command"] += ["--fail-at-start", reason]

    job = console.sim_job(model_id, "dies-at-start", 3, edit_template=failing)
    ended = console.wait_settled(job["id"], 90)
    # AIBrix: an engine that never ran is a submit failure, not a failed batch.
    assert ended["status"] == "submit_failed"
    assert ended["error_code"] == "engine_not_ready"
    assert ended["error_message"].startswith(reason), ended["error_message"]
    assert len(ended["error_message"]) <= 400

    batch = console.http.get(f"/v1/batches/{ended['batch_id']}").json()
    assert batch["status"] == "failed"
    [error] = batch["errors"]["data"]
    assert error["code"] == "engine_not_ready" and error["message"].startswith(reason)

    # The engine's log went with its work directory once the batch was terminal.
    assert not (WORK_ROOT / ended["batch_id"]).exists()
