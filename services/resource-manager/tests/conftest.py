"""Fixtures: a resource-manager (store, driver, reconciler) wired to a provider simulator, for tests.

Time: the rig's clock is fixed and moves one second per driver round, so deadlines and retry
spacing are in rig-seconds while the simulators boot in (scaled) real time.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.clock import FixedClock, utcnow
from neobatch.common.contracts import ProvisionReleaseRequested, ProvisionRequested, ResourceRequest
from neobatch.common.mongo import create_mongo_client
from neobatch.common.outbox import OUTBOX
from neobatch.common.subjects import Namespace
from neobatch.common.throughput_store import ThroughputStore
from neobatch.resource_manager.app import cloud_providers
from neobatch.resource_manager.driver import ProvisionDriver
from neobatch.resource_manager.handlers import ProvisionEventHandler
from neobatch.resource_manager.reconciler import Reconciler
from neobatch.resource_manager.settings import read_settings
from neobatch.resource_manager.store import ProvisionStore
from neobatch.sim.pytest_plugin import ProviderSimInfo, SSHKeyPair
from neobatch.sim.testing.waiting import wait_until


def provider_env(provider: str, sim: ProviderSimInfo, keypair: SSHKeyPair) -> dict[str, str]:
    if provider == "runpod":
        return {
            "RUNPOD_API_KEY": sim.api_key,
            "RUNPOD_SSH_PUBLIC_KEY": keypair.public_key,
            "RUNPOD_BASE_URL": sim.url,
        }
    return {
        "LAMBDA_CLOUD_API_KEY": sim.api_key,
        "LAMBDA_CLOUD_SSH_KEYS": "neobatch-test",
        "LAMBDA_CLOUD_BASE_URL": sim.url,
        "LAMBDA_CLOUD_SSH_PORT": str(sim.ssh_port),
    }


class CloudRig:
    def __init__(self, mongo_url: str, db_name: str, env: dict[str, str]) -> None:
        self.settings = read_settings(env)
        self.client = create_mongo_client(mongo_url)
        self.db: AsyncDatabase[dict[str, Any]] = self.client.get_database(db_name)
        self.clock = FixedClock(utcnow())
        self.store = ProvisionStore(self.client, self.db, Namespace(f"t{uuid.uuid4().hex[:8]}"))
        self.clouds = cloud_providers(self.settings)
        self.samples = ThroughputStore(self.db)
        self.driver = ProvisionDriver(
            self.store,
            self.clouds,
            self.clock,
            lambda: None,
            offer_order=self.settings.cloud_order,
            learned=self.samples.list_learned,
        )
        self.handler = ProvisionEventHandler(
            self.store, self.clock, self.settings.provisioners, self.driver.wake, lambda: None
        )
        self.reconciler = Reconciler(self.store, self.clouds, self.clock, lambda: None)

    async def close(self) -> None:
        for provider in self.clouds.values():
            await provider.close()  # type: ignore[attr-defined]  # the clouds' HTTP clients
        await self.client.close()

    async def request(
        self,
        accelerator: str = "H100",
        count: int = 1,
        *,
        provider: str | None = None,
        deadline_seconds: float = 600,
        job_id: str | None = None,
        **ranking: Any,
    ) -> str:
        """`ranking`: the ResourceRequest's offer-ranking fields (alternatives, throughput...)."""
        provision_id = f"prov_{uuid.uuid4().hex}"
        await self.handler.on_provision_requested(
            ProvisionRequested(
                provision_id=provision_id,
                job_id=job_id or f"job_{uuid.uuid4().hex}",
                resource=ResourceRequest(
                    accelerator_type=accelerator,
                    accelerator_count=count,
                    provider=provider,
                    **ranking,
                ),
                deadline_at=self.clock.now() + timedelta(seconds=deadline_seconds),
            )
        )
        return provision_id

    async def release(self, provision_id: str) -> None:
        doc = await self.doc(provision_id)
        await self.handler.on_provision_release_requested(
            ProvisionReleaseRequested(provision_id=provision_id, job_id=doc["job_id"])
        )

    async def doc(self, provision_id: str) -> dict[str, Any]:
        found = await self.db.provisions.find_one({"_id": provision_id})
        assert found is not None
        return found

    async def round(self) -> None:
        self.clock.advance(1)
        while await self.driver.step_batch():
            pass

    async def drive_until(
        self, provision_id: str, statuses: set[str], timeout_seconds: float = 30
    ) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            await self.round()
            doc = await self.doc(provision_id)
            return doc if doc["status"] in statuses else None

        return await wait_until(
            reached, timeout_seconds, interval=0.02, message=f"{provision_id} in {statuses}"
        )

    async def subjects(self) -> list[str]:
        return [
            e["subject"].split(".", 1)[1]
            async for e in self.db[OUTBOX].find().sort("created_at", 1)
        ]


@pytest.fixture(params=["runpod", "lambdaCloud"])
def provider_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def provider_sim(provider_name: str, request: pytest.FixtureRequest) -> ProviderSimInfo:
    fixture = "runpod_sim" if provider_name == "runpod" else "lambda_sim"
    return request.getfixturevalue(fixture)  # type: ignore[no-any-return]


@pytest_asyncio.fixture
async def rig(
    provider_name: str,
    provider_sim: ProviderSimInfo,
    ssh_keypair: SSHKeyPair,
    mongo_url: str,
    mongo_db: AsyncDatabase,
) -> AsyncIterator[CloudRig]:
    env = {
        "PROVISIONER": provider_name,
        "NEOBATCH_PROVIDER_RETRY_BUDGET_SECONDS": "1",
        **provider_env(provider_name, provider_sim, ssh_keypair),
    }
    built = CloudRig(mongo_url, mongo_db.name, env)
    await built.store.ensure_indexes()
    await built.samples.ensure_indexes()
    yield built
    await built.close()
