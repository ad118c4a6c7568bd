"""Start-up outlives a restarting database and broker.

Every service is started while MongoDB and nats-server are both down. Each must keep retrying
its start-up steps instead of dying, and become ready once the database and then the broker
come back; a job then runs through the restarted services to show they did not just answer
/readyz but work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from neobatch.sim.devstack import Ports, Stack, http_status, start_stack
from neobatch.sim.scenario import ConsoleClient, batch_lines, sim_engine_template

SERVICES = ("console", "planner", "resource-manager", "runtime-agent")
RETRY_LINE = "start-up step failed; retrying"
# The database's first failure surfaces after pymongo's 10 s server selection timeout.
WAIT_SECONDS = 60.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = start_stack(
        tmp_path_factory.mktemp("stack"), Ports.free(), {"NEOBATCH_DB": "startup"}
    )
    try:
        yield started
    finally:
        started.stop()


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
