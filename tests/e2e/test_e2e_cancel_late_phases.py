"""Cancel in the two short phases, batch_created and finalizing, on the local stack, and
while every request hangs (the in-flight requests are cut after NEOBATCH_CANCEL_GRACE_SECONDS).

Both phases are held open by ordinary behaviour rather than by hooks in the services:
- batch_created: the runtime-agent has accepted the batch (it reported `validating`) but runs at
  most NEOBATCH_MAX_BATCHES=1 batch at a time and another batch holds that slot;
- finalizing: the agent has written the output files and is stopping the engine, and this
  engine does not react to SIGTERM (the signal is blocked), so the stop takes the whole grace
  period NEOBATCH_ENGINE_STOP_GRACE_SECONDS before the SIGKILL.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until

STOP_GRACE_SECONDS = 8
CANCEL_GRACE_SECONDS = 2
# Starts the engine simulator with SIGTERM blocked; the mask survives exec, so the engine's own
# handler never runs and only the SIGKILL after the grace period ends it.
TERM_BLOCKED = (
    "import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM]); "
    "os.execv(sys.executable, [sys.executable, '-m', 'neobatch.sim.engine', *sys.argv[1:]])"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = Ports.free()
    pool = ",".join(f"u{i}@127.0.0.1:{ports.ssh}=H100x8" for i in range(3))
    env = {
        "NEOBATCH_DB": "cancel_late_phases",
        "NEOBATCH_SSH_POOL": pool,
        "NEOBATCH_DISPATCH_CONCURRENCY": "16",
        "NEOBATCH_MAX_BATCHES": "1",
        "NEOBATCH_ENGINE_STOP_GRACE_SECONDS": str(STOP_GRACE_SECONDS),
        "NEOBATCH_RUNNER_POLL_SECONDS": "1",
        "NEOBATCH_CANCEL_GRACE_SECONDS": str(CANCEL_GRACE_SECONDS),
    }
    with start_stack(tmp_path_factory.mktemp("stack"), ports, env) as started:
        yield started


async def wait_status(
    console: ConsoleClient, job_id: str, status: str, within_seconds: float
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = console.job(job_id)
        return job if job["status"] == status else None

    return await wait_until(reached, within_seconds, interval=0.05, message=f"{job_id} {status}")


async def settled(console: ConsoleClient, job_id: str, within_seconds: float) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job = console.job(job_id)
        provision = job.get("provision") or {}
        done = job["status"] in {"completed", "failed", "expired", "cancelled"}
        return job if done and provision.get("status") == "released" else None

    return await wait_until(ended, within_seconds, interval=0.1, message=f"{job_id} settled")


async def test_cancel_while_batch_created(console: ConsoleClient, model_id: str) -> None:
    # 300 requests, 16 at a time, 400 ms each: the agent's one slot is busy for about 7.5 s.
    blocker = console.sim_job(model_id, "holds-the-slot", 300, latency_ms=400)
    await wait_status(console, blocker["id"], "in_progress", 30)
    job = console.sim_job(model_id, "accepted-not-started", 5)
    await wait_status(console, job["id"], "batch_created", 30)

    console.cancel(job["id"])
    await wait_status(console, job["id"], "cancelling", 10)
    assert console.job(blocker["id"])["status"] == "in_progress"  # the slot was still taken

    ended = await settled(console, job["id"], 60)
    assert ended["status"] == "cancelled"
    assert ended["request_counts"]["completed"] == 0
    assert not ended.get("output_dataset")
    other = await settled(console, blocker["id"], 30)
    assert other["status"] == "completed" and other["request_counts"]["completed"] == 300


async def test_cancel_while_finalizing_keeps_every_line(
    console: ConsoleClient, model_id: str
) -> None:
    requests = 40

    def slow_stop(template: dict[str, Any]) -> None:
        engine = template["spec"]["engine"]
        engine["command"] = [sys.executable, "-c", TERM_BLOCKED, *engine["command"][3:]]

    job = console.sim_job(model_id, "slow-to-stop", requests, edit_template=slow_stop)
    await wait_status(console, job["id"], "finalizing", 30)

    console.cancel(job["id"])
    console.cancel(job["id"])  # repeated cancels are harmless
    await wait_status(console, job["id"], "cancelling", 5)

    ended = await settled(console, job["id"], STOP_GRACE_SECONDS + 30)
    # Every request had finished: the batch completed anyway and its output is whole.
    assert ended["status"] == "cancelled"
    assert ended["request_counts"]["completed"] == requests
    output = console.file_lines(ended["output_dataset"])
    ids = sorted(line["custom_id"] for line in output)
    assert ids == sorted(f"request-{i}" for i in range(1, requests + 1))
    assert console.cancel(job["id"])["status"] == "cancelled"


async def test_cancel_cuts_requests_that_hang_after_the_grace(
    console: ConsoleClient, model_id: str
) -> None:
    """Every request hangs for 120 s (its request timeout is 600 s): a cancel must not keep the
    machine for that long. The hung requests are cut after the grace, no answer is invented
    for them, and the machine is released."""
    requests = 6
    port = free_port()
    job = console.sim_job(
        model_id, "hangs", requests, hang_rate=1.0, hang_seconds=120, engine_port=port
    )

    def all_hanging() -> bool:
        try:
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.TransportError:
            return False  # the engine is not up yet
        return f"neobatch_sim_requests_in_flight {requests}" in metrics.splitlines()

    await wait_until(all_hanging, 30, interval=0.1, message="every request sent and hanging")
    console.cancel(job["id"])
    ended = await settled(console, job["id"], CANCEL_GRACE_SECONDS + 30)
    assert ended["status"] == "cancelled"
    assert ended["request_counts"]["completed"] == 0
    # Nothing answered: no output line, and no cut request recorded as anything but cancelled.
    assert console.file_lines(ended.get("output_dataset")) == []
    errors = console.file_lines(ended.get("error_dataset"))
    assert all(line["error"]["code"] == "batch_cancelled" for line in errors), errors
