"""Chaos: 20 jobs in flight while services are SIGKILLed and restarted at random moments,
and nats-server and the database are restarted once each.

At the end every job is completed, each output holds each custom_id exactly once, no pool
host is still leased and no engine process is left running. The seed is printed; replay a
failure with NEOBATCH_CHAOS_SEED=<seed>.

Then every service is started while MongoDB and nats-server are both down: each must keep
retrying its start-up steps instead of dying, and become ready once the database and then the
broker come back; a job then runs through the restarted services.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from neobatch.sim.devstack import Ports, Stack, marked_pids, start_stack
from neobatch.sim.devstack.readiness import http_status
from neobatch.sim.devstack.scenario import (
    ConsoleClient,
    batch_lines,
    sim_engine_template,
    stuck_job_report,
)

JOBS = 20
REQUESTS = 40
POOL_HOSTS = 4
SERVICES = ("console", "planner", "resource-manager", "runtime-agent")
CHAOS_SECONDS = 45.0
RETRY_LINE = "start-up step failed; retrying"
# The database's first failure surfaces after pymongo's 10 s server selection timeout.
WAIT_SECONDS = 60.0
# Every job settles within this after the chaos ends (one deadline for all, inside pytest's).
SETTLE_SECONDS = 150.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = Ports.free()
    pool = ",".join(f"u{i}@127.0.0.1:{ports.ssh}" for i in range(POOL_HOSTS))
    env = {
        "NEOBATCH_DB": "chaos",
        "NEOBATCH_SSH_POOL": pool,
        # Short leases so work held by a killed process is taken over quickly.
        "NEOBATCH_BATCH_LEASE_SECONDS": "4",
    }
    with start_stack(tmp_path_factory.mktemp("stack"), ports, env) as started:
        yield started


class ChaosDriver(threading.Thread):
    """Kills and restarts components until told to stop; records what it did."""

    def __init__(self, stack: Stack, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.rng = rng
        self.stop_event = threading.Event()
        self.actions: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            started = time.monotonic()
            # nats-server and the database restart once each, at random points of the run.
            infra_at = {"nats": self.rng.uniform(5, 20), "mongo": self.rng.uniform(20, 35)}
            while not self.stop_event.wait(self.rng.uniform(1.5, 4.0)):
                elapsed = time.monotonic() - started
                due = [name for name, at in infra_at.items() if at <= elapsed]
                if due:
                    name = due[0]
                    del infra_at[name]
                    self.stack.processes[name].stop()
                    self.actions.append(f"{elapsed:5.1f}s restart {name}")
                else:
                    name = self.rng.choice(SERVICES)
                    self.stack.kill(name)
                    self.actions.append(f"{elapsed:5.1f}s SIGKILL {name}")
                self.stop_event.wait(self.rng.uniform(0.2, 1.5))
                self.stack.restart(name)
        except BaseException as error:  # surfaced by the test, not lost in the thread
            self.error = error


@pytest.mark.timeout(420)  # past the settle deadline, so a stuck job is reported, not cut
def test_jobs_survive_random_crashes_and_restarts(stack: Stack) -> None:
    seed = int(os.environ.get("NEOBATCH_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nchaos seed: {seed} (replay with NEOBATCH_CHAOS_SEED={seed})")
    rng = random.Random(seed)

    console = ConsoleClient.for_stack(stack)
    model_id = console.ensure_model()
    jobs = []
    for i in range(JOBS):
        # A template (so an engine port) per job: the pool's hosts are all this machine, and two
        # jobs on one template running at once on two hosts would share one port.
        name = f"chaos-{i}"
        console.create_template(
            model_id, sim_engine_template(name, model_id, latency_ms=rng.choice([20, 50, 100]))
        )
        file_id = console.upload(batch_lines(REQUESTS))
        jobs.append(console.create_job(file_id, model_id, name)["id"])

    driver = ChaosDriver(stack, rng)
    driver.start()
    deadline = time.monotonic() + CHAOS_SECONDS
    while time.monotonic() < deadline and driver.is_alive():
        time.sleep(0.5)
    driver.stop_event.set()
    driver.join(timeout=60)
    print("\n".join(driver.actions))
    assert driver.error is None, f"chaos driver failed: {driver.error!r}"
    assert not stack.dead_components(), stack.dead_components()

    ended = wait_all_settled(stack, console, jobs, SETTLE_SECONDS)
    expected_ids = sorted(f"request-{i}" for i in range(1, REQUESTS + 1))
    for job_id, job in ended.items():
        assert job["status"] == "completed", (job_id, job["status"], job.get("error_message"))
        lines = console.file_lines(job["output_dataset"]) + console.file_lines(job["error_dataset"])
        assert sorted(line["custom_id"] for line in lines) == expected_ids, job_id
    console.close()

    # No machine left leased, and nothing but the stack's own components still running.
    components = {handle.pid for handle in stack.processes.values()}
    assert set(marked_pids(stack.run_dir)) - components == set()


def wait_all_settled(
    stack: Stack, console: ConsoleClient, jobs: list[str], seconds: float
) -> dict[str, dict[str, Any]]:
    """Every job terminal with its machine released, or fail naming what each stuck job was
    doing: its view, its timeline and the last log lines that mention it in each service."""
    deadline = time.monotonic() + seconds
    ended: dict[str, dict[str, Any]] = {}
    for job_id in jobs:
        try:
            ended[job_id] = console.wait_settled(job_id, max(1.0, deadline - time.monotonic()))
        except AssertionError as stuck:
            pytest.fail(f"{stuck}\n{stuck_job_report(stack, console, job_id)}")
    return ended


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def retries_logged(stack: Stack, name: str, step: str = "") -> int:
    lines = stack.log_path(name).read_text(errors="replace").splitlines()
    return sum(1 for line in lines if RETRY_LINE in line and step in line)


def services_down(stack: Stack) -> list[str]:
    return [name for name in stack.dead_components() if name in SERVICES]


def test_services_started_while_database_and_broker_restart_become_ready(
    stack: Stack, console: ConsoleClient, model_id: str
) -> None:
    stack.processes["mongo"].stop()
    stack.processes["nats"].stop()
    before = {name: retries_logged(stack, name) for name in SERVICES}
    for name in SERVICES:
        stack.kill(name)
        stack.restart(name)

    def all_retrying() -> bool:
        return all(retries_logged(stack, name) > before[name] for name in SERVICES)

    wait_for(all_retrying, "every service to retry a start-up step")
    assert services_down(stack) == []

    # The database comes back first: every service gets past its indexes and waits on the
    # broker, still down.
    waiting_on_nats = {name: retries_logged(stack, name, "nats connect") for name in SERVICES}
    stack.restart("mongo")
    wait_for(
        lambda: all(
            retries_logged(stack, name, "nats connect") > waiting_on_nats[name] for name in SERVICES
        ),
        "every service to retry connecting to nats",
    )
    stack.restart("nats")

    def all_ready() -> bool:
        assert services_down(stack) == []
        return all(http_status(f"{stack.health_url(n)}/readyz") == 200 for n in SERVICES)

    wait_for(all_ready, "every service to become ready")

    console.create_template(model_id, sim_engine_template("startup", model_id, latency_ms=5))
    file_id = console.upload(batch_lines(10))
    job = console.wait_settled(console.create_job(file_id, model_id, "startup")["id"], 120)
    assert job["status"] == "completed", job.get("error_message")
    assert len(console.file_lines(job["output_dataset"])) == 10
