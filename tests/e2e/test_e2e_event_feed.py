"""The event feed end to end (issue 17, docs/events.md): the local stack runs on a nats-server
configured with deploy/'s logins; an operator creates the `integration` durable with the example
subscriber, which then runs as the restricted `integration` user while jobs run, and prints
every status change of each job, in order."""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient
from neobatch.sim.testing.servers import ManagedProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "subscriber.py"
# "<occurred_at> <job_id> <old> -> <new> (v<job_version>[, reason])"
LINE = re.compile(r"^(\S+) (job_\w+) (\S+) -> (\S+) \(v(\d+)")


@pytest.fixture(scope="module")
def nats_port(shipped_nats: Any) -> int:
    return shipped_nats("k8s")


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, shipped_nats: Any, nats_port: int
) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("stack")
    with start_stack(
        run_dir,
        Ports.free(),
        {"NEOBATCH_DB": "feed"},
        nats_url=shipped_nats.services_url(nats_port),
    ) as started:
        yield started


def run_example(*args: str, log: Path) -> ManagedProcess:
    return ManagedProcess([sys.executable, "-u", str(EXAMPLE), *args], log, cwd=ROOT)


def printed(log: Path) -> dict[str, list[tuple[str, str, int]]]:
    """The example's lines by job: (old, new, job_version) in the order printed."""
    by_job: dict[str, list[tuple[str, str, int]]] = {}
    for line in log.read_text().splitlines():
        match = LINE.match(line)
        if match:
            _, job_id, old, new, version = match.groups()
            by_job.setdefault(job_id, []).append((old, new, int(version)))
    return by_job


def wait_printed(log: Path, job_id: str, status: str, seconds: float) -> list[tuple[str, str, int]]:
    deadline = time.monotonic() + seconds
    while True:
        changes = printed(log).get(job_id, [])
        if changes and changes[-1][1] == status:
            return changes
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} never printed as {status}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def test_example_subscriber_prints_every_status_change_of_each_job_in_order(
    stack: Stack, console: ConsoleClient, model_id: str, shipped_nats: Any, nats_port: int,
    tmp_path: Path,
) -> None:  # fmt: skip
    # The operator, with the services' login, creates the durable once.
    with run_example(
        "--url", shipped_nats.services_url(nats_port), "--create-consumer",
        log=tmp_path / "create.log",
    ) as create:  # fmt: skip
        deadline = time.monotonic() + 60
        while create.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert create.returncode == 0, (tmp_path / "create.log").read_text()

    log = tmp_path / "subscriber.log"
    with run_example("--url", shipped_nats.integration_url(nats_port), log=log) as subscriber:
        done = console.sim_job(model_id, "feed-done", 30)
        cancelled = console.sim_job(model_id, "feed-cancel", 30, startup_delay_seconds=30)
        console.wait_job(cancelled["id"], lambda j: j["status"] != "queued", 60, "provisioning")
        console.cancel(cancelled["id"])
        finished = {job["id"]: console.wait_settled(job["id"], 120) for job in (done, cancelled)}
        assert finished[done["id"]]["status"] == "completed"
        assert finished[cancelled["id"]]["status"] == "cancelled"

        for job_id, job in finished.items():
            changes = wait_printed(log, job_id, job["status"], 30)
            # Every change once, each starting where the one before ended, versions rising.
            assert changes[0][0] == "(new)" and changes[0][1] == "queued", changes
            for before, after in itertools.pairwise(changes):
                assert after[0] == before[1], changes
                assert after[2] > before[2], changes
            # The same steps as the job's own timeline.
            timeline = [e["id"] for e in job["events"] if e["id"] != "cancel_requested"]
            assert [new for _, new, _ in changes] == timeline, (changes, timeline)
        assert subscriber.alive(), log.read_text()
    # The integration login never printed, and the durable has nothing left unacknowledged.
    assert shipped_nats.integration_password not in log.read_text()
    info = asyncio.run(durable_info(shipped_nats.services_url(nats_port)))
    assert (info.num_pending, info.num_ack_pending) == (0, 0), info


async def durable_info(url: str) -> Any:
    nc = await nats.connect(url)
    try:
        return await nc.jetstream().consumer_info("NEOBATCH_EVENTS", "integration")
    finally:
        await nc.close()
