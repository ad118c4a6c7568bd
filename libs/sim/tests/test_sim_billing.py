"""The cloud simulators' billing records: per machine, in the provider's increment."""

from __future__ import annotations

import json
import math
import time

import pytest

from neobatch.sim.cloud.billing import BillingRecord, billed_seconds
from neobatch.sim.cloud.sim import SimMachine
from neobatch.sim.pytest_plugin import ProviderSimInfo
from neobatch.sim.testing.background import BackgroundLoop


@pytest.mark.parametrize(
    ("elapsed", "increment", "billed"),
    [(0, 1, 0), (0.2, 1, 1), (2.0, 1, 2), (2.01, 1, 3), (1, 60, 60), (61, 60, 120)],
)
def test_a_started_increment_is_billed_in_full(elapsed, increment, billed):
    assert billed_seconds(elapsed, increment) == billed


def test_a_record_bills_from_its_start_to_termination_or_now():
    record = BillingRecord("m1", "n", "H100", 1, "r", 3.6, created_at=100.0, billed_from=100.0)
    assert record.billed(1, now=110.5)["billed_seconds"] == 11
    record.terminated_at = 104.2
    assert record.billed(1, now=999)["billed_seconds"] == 5
    assert record.billed(1, now=999)["usd"] == 0.005
    never_up = BillingRecord("m2", "n", "H100", 1, "r", 3.6, created_at=100.0, billed_from=None)
    assert never_up.billed(60, now=999)["billed_seconds"] == 0


def _machine(machine_id: str) -> SimMachine:
    return SimMachine(
        id=machine_id,
        name=f"nb-{machine_id}",
        gpu="NVIDIA H100 PCIe",
        gpu_count=1,
        region="EU-RO-1",
        price_per_hour=3.6,
        public_keys=[],
        created_at=time.time() - 2.5,  # created 2.5 s ago
        ready_at=None,
        ip="127.0.0.1",
    )


def test_runpod_bills_each_machine_per_second_from_create_to_terminate(
    runpod_sim: ProviderSimInfo, sim_loop: BackgroundLoop
) -> None:
    sim = runpod_sim.sim
    machine = _machine("pod1")
    sim_loop.run(sim.add_machine(machine))
    [live] = runpod_sim.admin("GET", "/billing")["machines"]
    assert live["terminated_at"] is None and live["billed_seconds"] >= 3
    sim_loop.run(sim.terminate(machine))
    [record] = runpod_sim.admin("GET", "/billing")["machines"]
    held = record["terminated_at"] - record["created_at"]
    assert (record["machine"], record["increment_seconds"]) == ("pod1", 1)
    assert record["billed_seconds"] == math.ceil(held) >= 3  # 2.5 s and more: a started second
    assert record["usd"] == round(record["billed_seconds"] * 3.6 / 3600, 6)
    with open(sim.billing_file) as file:  # the same record, as a JSON line
        assert json.loads(file.read()) == record


def test_lambda_bills_per_started_minute_and_nothing_before_the_instance_is_up(
    lambda_sim: ProviderSimInfo, sim_loop: BackgroundLoop
) -> None:
    sim = lambda_sim.sim
    machine = _machine("inst1")  # never boots (ready_at None)
    sim_loop.run(sim.add_machine(machine))
    sim_loop.run(sim.terminate(machine))
    [record] = lambda_sim.admin("GET", "/billing")["machines"]
    assert (record["increment_seconds"], record["billed_from"], record["billed_seconds"]) == (
        60,
        None,
        0,
    )
