"""The provision driver with the ssh pool provider, against a real Mongo-wire server."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
import pytest_asyncio
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.clock import FixedClock, utcnow
from neobatch.common.contracts import ProvisionReleaseRequested, ProvisionRequested, ResourceRequest
from neobatch.common.errors import ConfigError
from neobatch.common.mongo import create_mongo_client
from neobatch.common.outbox import OUTBOX
from neobatch.common.subjects import Namespace
from neobatch.resource_manager.driver import ProvisionDriver
from neobatch.resource_manager.handlers import ProvisionEventHandler
from neobatch.resource_manager.providers.base import Attempt
from neobatch.resource_manager.providers.ssh_pool import (
    SshPoolProvider,
    parse_pool,
    parse_prices,
)
from neobatch.resource_manager.provisions import Provision
from neobatch.resource_manager.store import ProvisionStore


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A loopback port that accepts connections, standing in for a pool host's sshd."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


class Rig:
    def __init__(
        self,
        db: AsyncDatabase,
        store: ProvisionStore,
        driver: ProvisionDriver,
        handler: ProvisionEventHandler,
        clock: FixedClock,
    ) -> None:
        self.db, self.store, self.driver, self.handler, self.clock = (
            db,
            store,
            driver,
            handler,
            clock,
        )

    async def drain(self) -> None:
        while await self.driver.step_batch():
            pass

    async def subjects(self) -> list[str]:
        return [
            e["subject"].split(".", 1)[1]
            async for e in self.db[OUTBOX].find().sort("created_at", 1)
        ]

    async def status(self, provision_id: str) -> str:
        doc = await self.db.provisions.find_one({"_id": provision_id})
        return doc["status"] if doc else ""


@pytest_asyncio.fixture
async def rig(mongo_url: str, mongo_db: AsyncDatabase, listening_port: int) -> AsyncIterator[Rig]:
    client = create_mongo_client(mongo_url)
    db = client.get_database(mongo_db.name)
    clock = FixedClock(utcnow())
    store = ProvisionStore(client, db, Namespace(f"t{uuid.uuid4().hex[:8]}"))
    await store.ensure_indexes()
    pool = SshPoolProvider(
        db,
        parse_pool(f"me@127.0.0.1:{listening_port}=H100x8"),
        prices=parse_prices("h100=1.25, A100=0.5"),
    )
    await pool.sync_pool()
    driver = ProvisionDriver(store, {"ssh": pool}, clock, lambda: None)
    handler = ProvisionEventHandler(store, clock, ("ssh",), driver.wake, lambda: None)
    yield Rig(db, store, driver, handler, clock)
    await client.close()


def request(
    provision_id: str, gpu: str = "H100", deadline_seconds: float = 60
) -> ProvisionRequested:
    return ProvisionRequested(
        provision_id=provision_id,
        job_id=f"job_{provision_id}",
        resource=ResourceRequest(accelerator_type=gpu, accelerator_count=1),
        deadline_at=utcnow() + timedelta(seconds=deadline_seconds),
    )


async def test_lease_runs_and_release_frees_the_host(rig: Rig) -> None:
    await rig.handler.on_provision_requested(request("p1"))
    await rig.handler.on_provision_requested(request("p1"))  # redelivered: still one provision
    await rig.drain()
    assert await rig.status("p1") == "running"
    await rig.handler.on_provision_release_requested(
        ProvisionReleaseRequested(provision_id="p1", job_id="job_p1")
    )
    await rig.drain()
    assert await rig.status("p1") == "released"
    assert await rig.subjects() == ["provision.running", "provision.released"]
    # What the bill needs: when it was leased, ready, released, and at the operator's price
    # (per GPU: the host has 8).
    doc = await rig.db.provisions.find_one({"_id": "p1"})
    assert doc["leased_at"] <= doc["running_at"] <= doc["releasing_at"] <= doc["released_at"]
    assert doc["lease"] == {
        "provider": "ssh",
        "gpu_type": "H100",
        "gpu_count": 1,
        "region": "local",
        "price_per_hour": 10.0,
    }
    assert await rig.db.ssh_hosts.count_documents({"leased_by": None}) == 1


async def test_a_release_that_races_the_machine_coming_up_still_releases_it(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel lands while the driver is bringing the machine up: the handler read the
    provision as `requested`, the driver then wrote `running`, and the handler's compare-and-set
    on the old version lost. The release must not be dropped (seen in CI: the job stayed
    `cancelling` and the machine leased)."""
    await rig.handler.on_provision_requested(request("p1"))
    stale = await rig.store.find_provision("p1")
    assert stale is not None and stale.status.value == "requested"
    await rig.drain()
    assert await rig.status("p1") == "running"
    reads = [stale]
    real_find = rig.store.find_provision

    async def find_stale_once(provision_id: str) -> Provision | None:
        return reads.pop() if reads else await real_find(provision_id)

    monkeypatch.setattr(rig.store, "find_provision", find_stale_once)
    await rig.handler.on_provision_release_requested(
        ProvisionReleaseRequested(provision_id="p1", job_id="job_p1")
    )
    await rig.drain()
    assert await rig.status("p1") == "released"
    assert await rig.subjects() == ["provision.running", "provision.released"]
    assert await rig.db.ssh_hosts.count_documents({"leased_by": None}) == 1


async def test_second_job_waits_for_the_host_then_gets_it(rig: Rig) -> None:
    await rig.handler.on_provision_requested(request("p1"))
    # p1 alone first: a batch steps its provisions at once, so either could take the host.
    await rig.drain()
    await rig.handler.on_provision_requested(request("p2"))
    await rig.drain()
    assert (await rig.status("p1"), await rig.status("p2")) == ("running", "requested")
    await rig.handler.on_provision_release_requested(
        ProvisionReleaseRequested(provision_id="p1", job_id="job_p1")
    )
    await rig.drain()
    rig.clock.advance(2)  # the waiting provision is looked at again after its retry delay
    await rig.drain()
    assert (await rig.status("p1"), await rig.status("p2")) == ("released", "running")


async def test_no_fitting_host_fails_at_the_deadline_with_the_reason(rig: Rig) -> None:
    await rig.handler.on_provision_requested(request("p1", gpu="A100", deadline_seconds=5))
    await rig.drain()
    assert await rig.status("p1") == "requested"
    rig.clock.advance(10)
    await rig.drain()
    doc = await rig.db.provisions.find_one({"_id": "p1"})
    assert doc["status"] == "failed" and doc["error_code"] == "ProvisionTimeout"
    assert await rig.subjects() == ["provision.failed"]


async def test_release_before_request_leaves_nothing_to_lease(rig: Rig) -> None:
    await rig.handler.on_provision_release_requested(
        ProvisionReleaseRequested(provision_id="p9", job_id="job_p9")
    )
    await rig.handler.on_provision_requested(request("p9"))
    await rig.drain()
    assert await rig.status("p9") == "released"
    assert await rig.db.ssh_hosts.count_documents({"leased_by": "p9"}) == 0
    assert await rig.subjects() == ["provision.released"]


async def test_unknown_provider_fails_with_reason(rig: Rig) -> None:
    event = request("p5")
    event = ProvisionRequested(
        provision_id="p5",
        job_id="job_p5",
        resource=ResourceRequest(accelerator_type="H100", provider="nowhere"),
        deadline_at=event.deadline_at,
    )
    await rig.handler.on_provision_requested(event)
    await rig.drain()
    doc = await rig.db.provisions.find_one({"_id": "p5"})
    assert doc["status"] == "failed" and doc["error_code"] == "UnknownProvider"


async def test_host_that_refuses_connections_is_not_ready(
    mongo_url: str, mongo_db: AsyncDatabase
) -> None:
    client = create_mongo_client(mongo_url)
    db = client.get_database(mongo_db.name)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed_port = sock.getsockname()[1]
    sock.close()
    pool = SshPoolProvider(
        db, parse_pool(f"me@127.0.0.1:{closed_port}"), connect_timeout_seconds=0.5
    )
    await pool.sync_pool()
    machine = await pool.create(
        Attempt(provision_id="px", name="neobatch-px-0"), ResourceRequest(accelerator_type="H100")
    )
    assert machine.ready is False and machine.gone is False
    await client.close()


@pytest_asyncio.fixture
async def handed_rig(
    mongo_url: str, mongo_db: AsyncDatabase, listening_port: int
) -> AsyncIterator[tuple[Rig, SshPoolProvider]]:
    """As the service runs: handlers lease what they record to the driver and hand it over."""
    client = create_mongo_client(mongo_url)
    db = client.get_database(mongo_db.name)
    clock = FixedClock(utcnow())
    store = ProvisionStore(client, db, Namespace(f"t{uuid.uuid4().hex[:8]}"))
    await store.ensure_indexes()
    pool = SshPoolProvider(
        db, parse_pool(",".join(f"u{i}@127.0.0.1:{listening_port}=H100x8" for i in range(3)))
    )
    await pool.sync_pool()
    driver = ProvisionDriver(store, {"ssh": pool}, clock, lambda: None)
    handler = ProvisionEventHandler(
        store, clock, ("ssh",), driver.wake, lambda: None, driver=driver
    )
    yield Rig(db, store, driver, handler, clock), pool
    await client.close()


async def test_handed_over_provisions_each_lease_one_host_at_once(
    handed_rig: tuple[Rig, SshPoolProvider],
) -> None:
    rig, _ = handed_rig
    ids = [f"p{i}" for i in range(5)]
    for provision_id in ids:
        await rig.handler.on_provision_requested(request(provision_id))
    await rig.handler.on_provision_requested(request("p0"))  # redelivered: no second host
    await rig.drain()
    statuses = [await rig.status(i) for i in ids]
    assert statuses.count("running") == 3 and statuses.count("requested") == 2
    holders = [doc["leased_by"] async for doc in rig.db.ssh_hosts.find()]
    assert sorted(holders) == sorted(
        i for i, s in zip(ids, statuses, strict=True) if s == "running"
    )
    for provision_id in ids:
        await rig.handler.on_provision_release_requested(
            ProvisionReleaseRequested(provision_id=provision_id, job_id=f"job_{provision_id}")
        )
    await rig.drain()
    assert [await rig.status(i) for i in ids] == ["released"] * 5
    assert await rig.db.ssh_hosts.count_documents({"leased_by": None}) == 3
    subjects = await rig.subjects()
    assert subjects.count("provision.running") == 3 and subjects.count("provision.released") == 5


async def test_a_host_leased_before_a_crash_is_the_one_the_provision_keeps(
    handed_rig: tuple[Rig, SshPoolProvider],
) -> None:
    rig, pool = handed_rig
    # Recorded by a process that then leased a host and died before saving which one.
    await rig.store.insert_requested(
        provision_id="p7",
        job_id="job_p7",
        provider="ssh",
        resource_name="neobatch-p7",
        request=ResourceRequest(accelerator_type="H100"),
        deadline_at=None,
        now=rig.clock.now(),
    )
    first = await pool.create(
        Attempt(provision_id="p7", name="neobatch-p7-0"), ResourceRequest(accelerator_type="H100")
    )
    await rig.drain()  # claimed from the database: not fresh, so it looks for its host first
    doc = await rig.db.provisions.find_one({"_id": "p7"})
    assert doc["status"] == "running" and doc["provider_resource_id"] == first.provider_resource_id
    assert await rig.db.ssh_hosts.count_documents({"leased_by": "p7"}) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", {}),
        ("H100=2.5", {"H100": 2.5}),
        ("nvidia h100 80gb=2.5, a100=1", {"H100": 2.5, "A100": 1.0}),
        ("L4=0", {"L4": 0.0}),
    ],
)
def test_pool_prices_parse_per_gpu_family(value: str, expected: dict[str, float]) -> None:
    assert parse_prices(value) == expected


@pytest.mark.parametrize("value", ["H100", "H100=", "=2", "H100=-1", "H100=abc", "H100=inf"])
def test_a_bad_pool_price_stops_start_up_with_the_entry(value: str) -> None:
    with pytest.raises(ConfigError, match="NEOBATCH_SSH_POOL_PRICES"):
        parse_prices(value)
