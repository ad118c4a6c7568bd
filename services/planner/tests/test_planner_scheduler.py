"""Provisioning slots, queue order and deadlines, against a real Mongo-wire server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.budget_store import BudgetStore
from neobatch.common.clock import FixedClock, utcnow
from neobatch.common.contracts import (
    BatchCancelRequested,
    BatchMachineDone,
    BatchStatus,
    BatchTerminal,
    JobCancelRequested,
    JobQueued,
    ProvisionFailed,
    ProvisionRunning,
    SshEndpoint,
    decode_event,
)
from neobatch.common.mongo import create_mongo_client
from neobatch.common.outbox import OUTBOX
from neobatch.common.subjects import Namespace
from neobatch.planner import jobs
from neobatch.planner.policy import Limits
from neobatch.planner.scheduler import Planner
from neobatch.planner.store import BatchConflict, JobStore

SPEC = {"accelerator": {"type": "H100", "count": 1}, "engine": {"port": 8000}}


class Rig:
    def __init__(
        self, db: AsyncDatabase, store: JobStore, planner: Planner, clock: FixedClock
    ) -> None:
        self.db, self.store, self.planner, self.clock = db, store, planner, clock

    async def add_job(self, n: int, project: str = "default") -> str:
        job_id = f"job_{n:03d}"
        await self.db.jobs.insert_one(
            {
                "_id": job_id,
                "project": project,
                "batch_id": f"batch_{n:03d}",
                "status": "queued",
                "version": 0,
                "template_spec": SPEC,
                "created_at": self.clock.now() + timedelta(milliseconds=n),
            }
        )
        return job_id

    async def statuses(self) -> dict[str, str]:
        return {doc["_id"]: doc["status"] async for doc in self.db.jobs.find()}


@pytest_asyncio.fixture
async def rig(mongo_url: str, mongo_db: AsyncDatabase) -> AsyncIterator[Rig]:
    client = create_mongo_client(mongo_url)
    db = client.get_database(mongo_db.name)
    clock = FixedClock(utcnow())
    store = JobStore(client, db, Namespace(f"t{uuid.uuid4().hex[:8]}"))
    await store.prepare(max_concurrent_provisioning=2)
    limits = Limits(provisioning_seconds=30, grace_seconds=5, cancel_seconds=10)
    yield Rig(db, store, Planner(store, clock, lambda: None, limits), clock)
    await client.close()


async def test_jobs_wait_for_a_slot_and_start_in_queue_order(rig: Rig) -> None:
    ids = [await rig.add_job(n) for n in range(5)]
    await rig.planner.plan_waiting()
    assert [s for _, s in sorted((await rig.statuses()).items())] == ["resource_preparing"] * 2 + [
        "queued"
    ] * 3

    # The first machine comes up: its slot frees and the oldest waiting job starts at once.
    endpoint = SshEndpoint(host="127.0.0.1", port=22, username="u")
    prov = (await rig.db.jobs.find_one({"_id": ids[0]}))["provision_id"]
    await rig.planner.apply(
        ids[0],
        ProvisionRunning(provision_id=prov, job_id=ids[0], provider="ssh", endpoint=endpoint),
    )
    await rig.planner.plan_waiting()
    statuses = await rig.statuses()
    assert statuses[ids[0]] == "submitting"
    assert statuses[ids[2]] == "resource_preparing"
    assert statuses[ids[3]] == statuses[ids[4]] == "queued"
    assert await rig.db.planner_slots.count_documents({"job_id": {"$ne": None}}) == 2


async def test_cancelled_queued_job_never_takes_a_slot(rig: Rig) -> None:
    ids = [await rig.add_job(n) for n in range(3)]
    await rig.planner.apply(ids[0], JobCancelRequested(job_id=ids[0]))
    await rig.planner.plan_waiting()
    statuses = await rig.statuses()
    assert statuses == {
        ids[0]: "cancelled",
        ids[1]: "resource_preparing",
        ids[2]: "resource_preparing",
    }


async def test_provisioning_that_never_answers_ends_resource_failed_and_frees_the_slot(
    rig: Rig,
) -> None:
    ids = [await rig.add_job(n) for n in range(3)]
    await rig.planner.plan_waiting()
    assert await rig.planner.expire_overdue() == 0
    rig.clock.advance(36)
    assert await rig.planner.expire_overdue() == 2
    await rig.planner.plan_waiting()
    statuses = await rig.statuses()
    assert statuses[ids[0]] == statuses[ids[1]] == "resource_failed"
    assert statuses[ids[2]] == "resource_preparing"
    failed = await rig.db.jobs.find_one({"_id": ids[0]})
    assert failed["error_code"] == "ProvisionTimeout"
    subjects = [
        e["subject"].split(".", 1)[1]
        async for e in rig.db[OUTBOX].find({"payload": {"$exists": True}})
    ]
    assert subjects.count("provision.release_requested") == 2


async def test_a_batch_whose_job_moved_writes_nothing_and_is_planned_one_by_one(rig: Rig) -> None:
    ids = [await rig.add_job(n) for n in range(3)]
    queued = (await rig.store.list_queued(["default"], 10))["default"]
    assert [job.id for job in queued] == ids
    # Someone else moves the second job after we read it: its compare-and-set must fail.
    await rig.db.jobs.update_one({"_id": ids[1]}, {"$inc": {"version": 1}})
    now = rig.clock.now()
    batch = [(job, jobs.decide(job, JobQueued(job_id=job.id), now)) for job in queued]
    with pytest.raises(BatchConflict):
        await rig.store.save_queued_batch(batch, now)
    assert set((await rig.statuses()).values()) == {"queued"}
    assert await rig.db.planner_slots.count_documents({"job_id": {"$ne": None}}) == 0
    assert await rig.db[OUTBOX].count_documents({}) == 0

    await rig.planner.plan_waiting()
    statuses = await rig.statuses()
    assert [statuses[i] for i in ids] == ["resource_preparing", "resource_preparing", "queued"]


async def test_many_queued_jobs_start_in_batches_up_to_the_slot_limit(rig: Rig) -> None:
    ids = [await rig.add_job(n) for n in range(40)]
    await rig.planner.apply(ids[1], JobCancelRequested(job_id=ids[1]))
    await rig.planner.plan_waiting()
    statuses = await rig.statuses()
    assert statuses[ids[0]] == statuses[ids[2]] == "resource_preparing"
    assert statuses[ids[1]] == "cancelled"
    assert all(statuses[i] == "queued" for i in ids[3:])
    requested = [
        e["subject"].split(".", 1)[1]
        async for e in rig.db[OUTBOX].find({"subject": {"$regex": "provision.requested$"}})
    ]
    assert len(requested) == 2


async def test_a_lowered_limit_never_hands_out_the_slots_beyond_it(rig: Rig) -> None:
    ids = [await rig.add_job(n) for n in range(5)]
    await rig.planner.plan_waiting()  # two slots: two jobs provisioning
    await rig.store.prepare(max_concurrent_provisioning=1)
    assert await rig.db.planner_slots.count_documents({}) == 2  # taken ones are kept
    await rig.db.planner_slots.update_many({}, {"$set": {"job_id": None}})  # both released
    await rig.planner.plan_waiting()
    statuses = await rig.statuses()
    assert [statuses[i] for i in ids[2:]] == ["resource_preparing", "queued", "queued"]


async def test_a_job_moved_by_another_writer_is_read_again_not_decided_from_our_copy(
    rig: Rig,
) -> None:
    ids = [await rig.add_job(n) for n in range(2)]
    await rig.planner.plan_waiting()  # the planner remembers both as it wrote them
    endpoint = SshEndpoint(host="127.0.0.1", port=22, username="u")

    # Another planner instance cancelled the first: our copy's compare-and-set fails.
    await rig.db.jobs.update_one(
        {"_id": ids[0]}, {"$set": {"status": "cancelling"}, "$inc": {"version": 1}}
    )
    prov0 = (await rig.db.jobs.find_one({"_id": ids[0]}))["provision_id"]
    await rig.planner.apply(
        ids[0], ProvisionFailed(provision_id=prov0, job_id=ids[0], code="x", reason="y")
    )
    assert (await rig.statuses())[ids[0]] == "cancelled"

    # Another instance replaced the second's machine: by our copy the event is not its
    # provision (nothing to do), by the stored job it is.
    await rig.db.jobs.update_one(
        {"_id": ids[1]}, {"$set": {"provision_id": "prov_x_2"}, "$inc": {"version": 1}}
    )
    await rig.planner.apply(
        ids[1],
        ProvisionRunning(provision_id="prov_x_2", job_id=ids[1], provider="ssh", endpoint=endpoint),
    )
    assert (await rig.statuses())[ids[1]] == "submitting"


async def test_one_projects_many_jobs_do_not_hold_back_another_projects_first(rig: Rig) -> None:
    """Project A queues 40 jobs, then project B one: B's job takes the next free slot."""
    many = [await rig.add_job(n, project="A") for n in range(40)]
    late = await rig.add_job(100, project="B")
    await rig.planner.plan_waiting()
    statuses = await rig.statuses()
    # Two slots: A's oldest and B's only job, not A's two oldest.
    assert statuses[many[0]] == "resource_preparing"
    assert statuses[late] == "resource_preparing"
    assert [statuses[j] for j in many[1:]] == ["queued"] * 39


async def test_a_project_at_its_machine_quota_waits_queued(mongo_url: str, mongo_db) -> None:
    client = create_mongo_client(mongo_url)
    db = client.get_database(mongo_db.name)
    clock = FixedClock(utcnow())
    store = JobStore(client, db, Namespace(f"t{uuid.uuid4().hex[:8]}"))
    await store.prepare(max_concurrent_provisioning=4)
    planner = Planner(store, clock, lambda: None, Limits(max_machines_per_project=1))
    rig = Rig(db, store, planner, clock)
    try:
        a = [await rig.add_job(n, project="A") for n in range(3)]
        await rig.planner.plan_waiting()
        statuses = await rig.statuses()
        assert [statuses[j] for j in a] == ["resource_preparing", "queued", "queued"]
        # Still waiting, not failed, on the next pass too.
        await rig.planner.plan_waiting()
        assert (await rig.statuses())[a[1]] == "queued"
        # The first job ends: the next one of A may start.
        await db.jobs.update_one({"_id": a[0]}, {"$set": {"status": "completed"}})
        await db.planner_slots.update_many({}, {"$set": {"job_id": None}})
        await rig.planner.plan_waiting()
        statuses = await rig.statuses()
        assert [statuses[j] for j in a] == ["completed", "resource_preparing", "queued"]
    finally:
        await client.close()


async def test_jobs_written_before_projects_existed_still_start(rig: Rig) -> None:
    old = await rig.add_job(1)
    await rig.db.jobs.update_one({"_id": old}, {"$unset": {"project": ""}})
    new = await rig.add_job(2, project="")
    await rig.planner.plan_waiting()
    statuses = await rig.statuses()
    assert statuses[old] == statuses[new] == "resource_preparing"


async def test_a_project_quota_override_is_read_from_project_quotas(rig: Rig) -> None:
    rig.planner = Planner(rig.store, rig.clock, lambda: None, Limits(max_machines_per_project=2))
    await rig.db.project_quotas.insert_one({"_id": "A", "max_machines": 1})
    a = [await rig.add_job(n, project="A") for n in range(2)]
    await rig.planner.plan_waiting()
    statuses = await rig.statuses()
    assert [statuses[j] for j in a] == ["resource_preparing", "queued"]


async def test_two_planners_never_pass_a_projects_machine_quota(mongo_url: str, mongo_db) -> None:
    """The machine quota was read before the placement was written: a second planner replica
    whose read of the machines in use predates the first one's placements started more."""
    clients = [create_mongo_client(mongo_url) for _ in range(2)]
    ns = Namespace(f"t{uuid.uuid4().hex[:8]}")
    stores = [JobStore(client, client.get_database(mongo_db.name), ns) for client in clients]
    await stores[0].prepare(max_concurrent_provisioning=8)
    clock = FixedClock(utcnow())
    limits = Limits(max_machines_per_project=2)
    first, second = (Planner(store, clock, lambda: None, limits) for store in stores)
    rig = Rig(stores[0]._db, stores[0], first, clock)
    try:
        a = [await rig.add_job(n, project="A") for n in range(6)]
        # The second replica read the machines in use before the first started any.
        stale = await stores[1].list_machines_in_use()

        async def stale_read() -> dict[str, int]:
            return stale

        stores[1].list_machines_in_use = stale_read  # type: ignore[method-assign]
        await first.plan_waiting()
        await second.plan_waiting()
        # The fallback path (a batch that lost a race is applied job by job) is held too.
        await second.apply(a[5], JobQueued(job_id=a[5]))
        statuses = await rig.statuses()
        assert [statuses[j] for j in a] == ["resource_preparing"] * 2 + ["queued"] * 4
        assert await rig.db.planner_slots.count_documents({"job_id": {"$ne": None}}) == 2
        # Both at once, from a clean start: still two machines.
        await rig.db.jobs.update_many({}, {"$set": {"status": "queued", "version": 9}})
        await rig.db.planner_slots.update_many({}, {"$set": {"job_id": None}})
        await asyncio.gather(first.plan_waiting(), second.plan_waiting())
        assert list((await rig.statuses()).values()).count("resource_preparing") == 2
    finally:
        for client in clients:
            await client.close()


async def _subjects(rig: Rig, job_id: str) -> list[str]:
    """The job's events in the outbox, in the order they were written."""
    found = []
    async for entry in rig.db[OUTBOX].find({}).sort("created_at", 1):
        if job_id.encode() in entry["payload"]:
            found.append(entry["subject"].split(".", 1)[1])
    return found


async def test_a_job_of_three_machines_from_placement_to_the_end(rig: Rig) -> None:
    """Issue 15 on the real database: three provisions, two join (concurrently), one never
    comes up, one runs out of work and is released at once, the batch ends: all released."""
    job_id = await rig.add_job(1)
    await rig.db.jobs.update_one({"_id": job_id}, {"$set": {"resource_request.replicas": 3}})
    await rig.planner.plan_waiting()
    doc = await rig.db.jobs.find_one({"_id": job_id})
    ids = [m["provision_id"] for m in doc["machines"]]
    assert ids == ["prov_001_1", "prov_001_2", "prov_001_3"]
    assert (await _subjects(rig, job_id)).count("provision.requested") == 3

    endpoint = SshEndpoint(host="127.0.0.1", port=22, username="u")
    up = [
        ProvisionRunning(provision_id=p, job_id=job_id, provider="runpod", endpoint=endpoint)
        for p in ids[:2]
    ]
    # Two machines up at the same moment: both join, whichever wins the first write.
    await asyncio.gather(*(rig.planner.apply(job_id, event) for event in up))
    await rig.planner.apply(
        job_id, ProvisionFailed(provision_id=ids[2], job_id=job_id, code="NoCapacity", reason="-")
    )
    doc = await rig.db.jobs.find_one({"_id": job_id})
    assert doc["status"] == "submitting"
    assert [m["state"] for m in doc["machines"]] == ["running", "running", "failed"]
    assert (await _subjects(rig, job_id)).count("batch.requested") == 2

    done = BatchMachineDone(
        batch_id="batch_001", job_id=job_id, provision_id=ids[0], reason="no_work_left"
    )
    await rig.planner.apply(job_id, done)
    await rig.planner.apply(job_id, done)  # a replay changes nothing
    released = [
        e.get("payload")
        async for e in rig.db[OUTBOX].find({"subject": {"$regex": "release_requested$"}})
    ]
    assert sum(ids[0].encode() in p for p in released) == 1

    ended = BatchTerminal(batch_id="batch_001", job_id=job_id, status=BatchStatus.COMPLETED)
    await rig.planner.apply(job_id, ended)
    doc = await rig.db.jobs.find_one({"_id": job_id})
    assert doc["status"] == "completed"
    assert [m["state"] for m in doc["machines"]] == ["releasing", "releasing", "failed"]
    released = [
        e.get("payload")
        async for e in rig.db[OUTBOX].find({"subject": {"$regex": "release_requested$"}})
    ]
    # Each machine released once: the done one at once, the other at the end, the failed one
    # when it failed (the resource-manager cleans up whatever it had begun).
    assert [sum(i.encode() in p for p in released) for i in ids] == [1, 1, 1]


async def test_a_project_over_budget_stops_running_jobs_only_when_its_operator_says_so(
    rig: Rig,
) -> None:
    """Issue 16: a project's monthly budget stops its running jobs (`budget_exceeded`) only with
    `stop_running_jobs`; another project's jobs run on."""
    budgets = BudgetStore(rig.db)
    now = rig.clock.now()
    for n, project in ((1, "spender"), (2, "other")):
        job_id = await rig.add_job(n, project)
        await rig.db.jobs.update_one(
            {"_id": job_id},
            {"$set": {"status": "in_progress", "batch_handed_over": True, "created_at": now}},
        )
        await rig.db.provisions.insert_one(
            {
                "_id": f"prov_{n}",
                "job_id": job_id,
                "provider": "runpod",
                "leased_at": now - timedelta(hours=1),
                "lease": {"provider": "runpod", "price_per_hour": 2.0},
            }
        )
    await budgets.save_budget("spender", 1.0, stop=False)
    await budgets.save_budget("other", 100.0, stop=True)
    assert await rig.planner.stop_over_budget(budgets) == 0  # spender: over, but not stopping

    await budgets.save_budget("spender", 1.0, stop=True)
    assert await rig.planner.stop_over_budget(budgets) == 1
    job = await rig.db.jobs.find_one({"_id": "job_001"})
    assert job["budget_stop_requested_at"] is not None and job["status"] == "in_progress"
    [stop] = [e async for e in rig.db[OUTBOX].find({"subject": {"$regex": "cancel_requested"}})]
    assert decode_event(stop["payload"], BatchCancelRequested).reason == "budget_exceeded"
    assert (await rig.db.jobs.find_one({"_id": "job_002"})).get("budget_stop_requested_at") is None
    # Asked once: a second pass changes nothing; the agent's answer ends the job failed.
    await rig.planner.stop_over_budget(budgets)
    assert await rig.db[OUTBOX].count_documents({"subject": {"$regex": "cancel_requested"}}) == 1


async def test_the_cost_caps_fields_are_read_with_the_job(rig: Rig) -> None:
    """The planner reads jobs through a projection: a cap it cannot see would never stop."""
    job_id = await rig.add_job(1)
    now = rig.clock.now()
    machine = {
        "provision_id": "prov_001_1",
        "state": "running",
        "provider": "runpod",
        "price_per_hour": 3.0,
        "leased_at": now,
        "running_at": now,
        "ended_at": None,
    }
    fields = {
        "max_cost_usd": 2.5,
        "machines": [machine],
        "budget_deadline_at": now + timedelta(seconds=60),
        "budget_stop_requested_at": now,
    }
    await rig.db.jobs.update_one({"_id": job_id}, {"$set": fields})
    job = await rig.store.get_job(job_id)
    assert job.max_cost_usd == 2.5 and job.budget_deadline_at is not None
    [read] = job.machines
    assert (read.provider, read.price_per_hour) == ("runpod", 3.0)
    assert read.leased_at is not None and read.running_at is not None and read.ended_at is None
    assert job.budget_stop_requested
