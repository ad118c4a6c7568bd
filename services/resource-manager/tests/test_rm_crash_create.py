"""The resource-manager SIGKILLed after a create reached the provider, before it recorded the
result: after a restart exactly one machine exists for that provision, and it is used, then
released. The service runs as its own process; the simulator holds the create's reply until
the process is dead, so the kill lands in exactly that window.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.clock import utcnow
from neobatch.common.contracts import ResourceRequest
from neobatch.common.ids import resource_name
from neobatch.common.mongo import create_mongo_client
from neobatch.common.subjects import Namespace
from neobatch.resource_manager.store import ProvisionStore
from neobatch.sim.pytest_plugin import ProviderSimInfo, SSHKeyPair
from neobatch.sim.testing.servers import ManagedProcess, start_python_module
from neobatch.sim.testing.waiting import wait_until

from .conftest import provider_env  # type: ignore[import-not-found]


@pytest.fixture
def start_rm(
    nats_url: str, mongo_url: str, mongo_db: AsyncDatabase, tmp_path: Path
) -> Iterator[Any]:
    started: list[ManagedProcess] = []

    def start(env: dict[str, str]) -> ManagedProcess:
        full = {
            "NATS_URL": nats_url,
            "MONGO_URL": mongo_url,
            "NEOBATCH_DB": mongo_db.name,
            "NEOBATCH_NAMESPACE": f"crash{uuid.uuid4().hex[:8]}",
            "NEOBATCH_PROVISION_LEASE_SECONDS": "1",
            "NEOBATCH_PROVIDER_RETRY_BUDGET_SECONDS": "1",
            "NEOBATCH_RECONCILE_SECONDS": "1",
            **env,
        }
        log = tmp_path / f"rm-{len(started)}.log"
        process = start_python_module("neobatch.resource_manager", env=full, log_path=log)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


async def test_sigkill_between_create_and_record_leaves_exactly_one_machine(
    provider_name: str,
    provider_sim: ProviderSimInfo,
    ssh_keypair: SSHKeyPair,
    mongo_url: str,
    mongo_db: AsyncDatabase,
    start_rm: Any,
) -> None:
    env = {"PROVISIONER": provider_name, **provider_env(provider_name, provider_sim, ssh_keypair)}
    client = create_mongo_client(mongo_url)
    store = ProvisionStore(client, client.get_database(mongo_db.name), Namespace("crash"))
    provision_id = f"prov_{uuid.uuid4().hex}"
    provider_sim.faults(hold_create=True)
    first = start_rm(env)
    await store.insert_requested(
        provision_id=provision_id,
        job_id="job_crash",
        provider=provider_name,
        resource_name=resource_name(provision_id),
        request=ResourceRequest(accelerator_type="H100"),
        deadline_at=utcnow() + timedelta(minutes=5),
        now=utcnow(),
    )
    await wait_until(lambda: provider_sim.sim.creates == 1, 30, message="create reached the sim")
    os.kill(first.pid, signal.SIGKILL)
    await wait_until(lambda: not first.alive(), 10)
    provider_sim.admin("POST", "/release-hold")
    doc = await store._provisions.find_one({"_id": provision_id})
    assert doc is not None and doc.get("provider_resource_id") is None  # result never recorded

    start_rm(env)

    async def running() -> dict[str, Any] | None:
        found = await store._provisions.find_one({"_id": provision_id})
        return found if found and found["status"] in ("running", "failed") else None

    doc = await wait_until(running, 60, interval=0.1, message="provision running after restart")
    assert doc["status"] == "running", doc.get("error_message")
    machines = provider_sim.live_machines()
    assert provider_sim.sim.creates == 1
    assert [m["id"] for m in machines] == [doc["provider_resource_id"]]
    assert machines[0]["name"].startswith(resource_name(provision_id))

    found = await store.find_provision(provision_id)
    assert found is not None
    await store.request_release(found, "test done", utcnow())

    async def released() -> bool:
        found = await store._provisions.find_one({"_id": provision_id})
        return bool(found and found["status"] == "released")

    await wait_until(released, 60, interval=0.1, message="provision released")
    assert provider_sim.live_machines() == []
    await client.close()
