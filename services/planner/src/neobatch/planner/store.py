"""JobStore: the planner's only MongoDB access. Every write is compare-and-set with its events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from pymongo import ASCENDING, AsyncMongoClient, IndexModel, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.contracts import TERMINAL_JOB_STATUSES, JobStatus
from neobatch.common.errors import NotFound
from neobatch.common.mongo import (
    delete_many_in_transaction,
    ensure_indexes,
    transact,
    update_many_in_transaction,
)
from neobatch.common.outbox import append_events
from neobatch.common.subjects import Namespace
from neobatch.common.transitions import compare_and_set
from neobatch.planner import policy
from neobatch.planner.job_doc import JOB_FIELDS, job_from_doc
from neobatch.planner.jobs import Decision, Job

# The oldest a deadline can be: a lower bound makes the overdue query a bounded range, which
# our test database (secantus) answers from the `deadline` index; `$lte` alone scans every
# job (50 ms on 2,000 jobs, against 1 ms).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

JOBS = "jobs"
SLOTS = "planner_slots"
# Statuses in which a job holds a machine or is being given one: what a project's machine
# quota counts.
MACHINE_STATUSES = [
    s.value
    for s in (
        JobStatus.RESOURCE_PREPARING,
        JobStatus.SUBMITTING,
        JobStatus.BATCH_CREATED,
        JobStatus.IN_PROGRESS,
        JobStatus.FINALIZING,
        JobStatus.CANCELLING,
    )
]
# Per-project overrides of the quotas (written by operators through the console; read here).
PROJECT_QUOTAS = "project_quotas"
# One document per project that every placement under a machine quota writes: two planners
# placing the same project's jobs conflict on it, so one counts its machines again.
PROJECT_GATES = "planner_project_gates"
INDEXES = [
    # The fair queue: each project's queued jobs oldest first, and the projects that have any
    # (a distinct scan), both read from this index without touching other jobs.
    IndexModel(
        [("status", ASCENDING), ("project", ASCENDING), ("created_at", ASCENDING), ("_id", 1)],
        name="status_project_created",
    ),
    IndexModel([("deadline_at", ASCENDING)], name="deadline", sparse=True),
    IndexModel([("batch_id", ASCENDING)], name="batch"),
]
SLOT_INDEXES = [IndexModel([("job_id", ASCENDING)], name="job")]
# Any slot that is free and within MAX_CONCURRENT_PROVISIONING: taking one is a single write.
FREE_SLOT = {"job_id": None, "active": True}


def _of_project(project: str) -> dict[str, Any]:
    """Jobs of `project`; "" also stands for documents written before jobs had one."""
    return {"project": project} if project else {"project": {"$in": [None, ""]}}


class NoSlotFree(Exception):
    """Every provisioning slot is taken; the job stays queued until one frees."""


class AtMachineQuota(Exception):
    """The job's project holds its quota of machines; the job stays queued."""


def _machines_given(job: Job, decision: Decision) -> int:
    """The machines `decision` gives `job` (0 unless it leaves `queued` for a machine)."""
    entering = decision.status is not None and decision.status.value in MACHINE_STATUSES
    return job.replicas if entering and job.status.value not in MACHINE_STATUSES else 0


class BatchConflict(Exception):
    """A job or slot of a batch moved under us; the transaction aborts and nothing is written."""


def _job_update(decision: Decision, now: datetime) -> dict[str, Any]:
    fields = dict(decision.fields)
    if decision.status is not None:
        fields["status"] = decision.status.value
    fields["updated_at"] = now
    fields = {k: msgspec.to_builtins(v, builtin_types=(datetime,)) for k, v in fields.items()}
    return {"$set": fields, "$inc": {"version": 1}}


class JobStore:
    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        db: AsyncDatabase[dict[str, Any]],
        ns: Namespace,
    ) -> None:
        self._client = client
        self._db = db
        self._jobs = db[JOBS]
        self._ns = ns
        self._slots = db[SLOTS]

    async def prepare(self, max_concurrent_provisioning: int) -> None:
        """Indexes, and exactly `max_concurrent_provisioning` slots (taken ones are kept)."""
        await ensure_indexes(self._jobs, INDEXES)
        await ensure_indexes(self._slots, SLOT_INDEXES)
        wanted = [f"slot-{i}" for i in range(max_concurrent_provisioning)]
        for slot_id in wanted:
            await self._slots.update_one(
                {"_id": slot_id},
                {"$setOnInsert": {"job_id": None}, "$set": {"active": True}},
                upsert=True,
            )
        # Slots beyond the limit: free ones go, taken ones stay until released but are
        # never handed out again (only `active` slots are).
        await update_many_in_transaction(
            self._slots, {"_id": {"$nin": wanted}}, {"$set": {"active": False}}
        )
        await delete_many_in_transaction(self._slots, {"_id": {"$nin": wanted}, "job_id": None})

    async def list_queued_heads(self) -> dict[str, datetime | None]:
        """Each project with queued jobs, with the time of its oldest one: one round trip that
        MongoDB answers by a distinct scan of `status_project_created` (one key per project)."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"status": JobStatus.QUEUED.value}},
            {"$sort": {"status": 1, "project": 1, "created_at": 1, "_id": 1}},
            {"$group": {"_id": "$project", "oldest": {"$first": "$created_at"}}},
        ]
        heads: dict[str, datetime | None] = {}
        async for doc in await self._jobs.aggregate(pipeline):
            project = doc["_id"] or ""
            oldest = doc.get("oldest")
            known = heads.get(project, oldest)
            # None and "" are the same (unnamed) project: keep its older head.
            heads[project] = None if None in (known, oldest) else min(known, oldest)
        return heads

    async def list_queued(self, projects: Sequence[str], per_project: int) -> dict[str, list[Job]]:
        """The `per_project` oldest queued jobs of each project, in queue order, in one round
        trip (one indexed, limited read per project)."""
        if not projects:
            return {}

        def oldest_of(project: str) -> list[dict[str, Any]]:
            return [
                {"$match": {"status": JobStatus.QUEUED.value, **_of_project(project)}},
                {"$sort": {"created_at": 1, "_id": 1}},
                {"$limit": per_project},
                {"$project": JOB_FIELDS},
            ]

        pipeline = oldest_of(projects[0])
        for project in projects[1:]:
            pipeline.append({"$unionWith": {"coll": JOBS, "pipeline": oldest_of(project)}})
        queued: dict[str, list[Job]] = {project: [] for project in projects}
        async for doc in await self._jobs.aggregate(pipeline):
            job = job_from_doc(doc)
            queued[job.project].append(job)
        return queued

    async def list_machines_in_use(self) -> dict[str, int]:
        """Machines each project holds or is being given (jobs past `queued`, not ended)."""
        return await self._machines_in_use(None, None)

    async def _machines_in_use(
        self, projects: Sequence[str] | None, session: AsyncClientSession | None
    ) -> dict[str, int]:
        match: dict[str, Any] = {"status": {"$in": MACHINE_STATUSES}}
        if projects is not None:
            match["project"] = {"$in": [*projects, *([None] if "" in projects else [])]}
        pipeline: list[dict[str, Any]] = [
            {"$match": match},
            {
                "$group": {
                    "_id": "$project",
                    "machines": {"$sum": {"$ifNull": ["$resource_request.replicas", 1]}},
                }
            },
        ]
        in_use: dict[str, int] = {}
        async for doc in await self._jobs.aggregate(pipeline, session=session):
            project = doc["_id"] or ""
            in_use[project] = in_use.get(project, 0) + int(doc["machines"] or 0)
        return in_use

    async def list_machine_quotas(
        self, projects: Sequence[str], session: AsyncClientSession | None = None
    ) -> dict[str, int]:
        """Per-project overrides of the machine quota, for `projects` (most have none)."""
        cursor = self._db[PROJECT_QUOTAS].find(
            {"_id": {"$in": list(projects)}, "max_machines": {"$type": "number"}},
            {"max_machines": 1},
            session=session,
        )
        return {doc["_id"]: int(doc["max_machines"]) async for doc in cursor}

    async def _fitting_quota(
        self, placing: list[tuple[str, int]], max_machines: int, session: AsyncClientSession
    ) -> int:
        """How many of `placing` (project, machines given), in order, fit the machine quotas,
        read inside the placement's transaction: exact across planner replicas, because the
        transaction also writes each placing project's gate document, so of two placements
        that counted the same project's machines one hits a write conflict and is retried."""
        projects = sorted({project for project, machines in placing if machines})
        if not projects:
            return len(placing)
        quotas = await self.list_machine_quotas(projects, session)
        if max_machines <= 0 and not any(quotas.get(p, 0) > 0 for p in projects):
            return len(placing)  # no quota applies: nothing to count
        in_use = await self._machines_in_use(projects, session)
        await self._db[PROJECT_GATES].bulk_write(
            [UpdateOne({"_id": p}, {"$inc": {"placements": 1}}, upsert=True) for p in projects],
            session=session,
        )
        return policy.quota_prefix(placing, in_use, max_machines=max_machines, quotas=quotas)

    async def list_overdue(self, now: datetime, limit: int = 100) -> list[Job]:
        cursor = self._jobs.find(
            {
                "deadline_at": {"$gte": EPOCH, "$lte": now},
                "status": {"$nin": [s.value for s in TERMINAL_JOB_STATUSES]},
            },
            JOB_FIELDS,
            limit=limit,
        )
        return [job_from_doc(doc) async for doc in cursor]

    async def _take_slot(self, job_id: str, session: AsyncClientSession) -> None:
        """Take a free provisioning slot for `job_id`, or raise NoSlotFree (aborting the
        transaction, so the job stays queued). Find then compare-and-set: cheaper than
        `find_one_and_update` on our test database, and as safe."""
        if await self._slots.find_one({"job_id": job_id}, {"_id": 1}, session=session):
            return
        taken = await self._slots.update_one(
            FREE_SLOT, {"$set": {"job_id": job_id}}, session=session
        )
        if taken.modified_count != 1:
            raise NoSlotFree

    async def list_running_job_ids(self, project: str, limit: int = 1000) -> list[str]:
        """The project's jobs holding a batch (a project budget may stop them)."""
        handed = ["submitting", "batch_created", "in_progress", "finalizing"]
        cursor = self._jobs.find(
            {**_of_project(project), "status": {"$in": handed}}, {"_id": 1}, limit=limit
        )
        return [doc["_id"] async for doc in cursor]

    async def get_job(self, job_id: str) -> Job:
        doc = await self._jobs.find_one({"_id": job_id}, JOB_FIELDS)
        if doc is None:
            raise NotFound(f"job {job_id!r} not found", code="job_not_found")
        return job_from_doc(doc)

    async def save_decision(
        self, job: Job, decision: Decision, now: datetime, *, max_machines: int = 0
    ) -> bool:
        """Apply `decision` made from `job` if the job has not moved since; events go with it.
        One that gives the job machines its project's quota has no room for raises
        `AtMachineQuota` and writes nothing (`max_machines`: the default quota, 0 none)."""
        update = _job_update(decision, now)
        expected = {"status": job.status.value, "version": job.version}
        if not (decision.events or decision.release_slot or decision.acquire_slot):
            # A field-only change (progress counts): one write, no transaction needed.
            return await compare_and_set(self._jobs, job.id, expected, update)

        placing = [(job.project, _machines_given(job, decision))]

        async def work(session: AsyncClientSession) -> bool:
            if not await self._fitting_quota(placing, max_machines, session):
                raise AtMachineQuota
            won = await compare_and_set(self._jobs, job.id, expected, update, session=session)
            if not won:
                return False
            if decision.release_slot:
                await self._slots.update_many(
                    {"job_id": job.id}, {"$set": {"job_id": None}}, session=session
                )
            if decision.acquire_slot:
                await self._take_slot(job.id, session)
            await append_events(self._db, self._ns, decision.events, session, now)
            return True

        return await transact(self._client, work)

    async def save_queued_batch(
        self, batch: Sequence[tuple[Job, Decision]], now: datetime, *, max_machines: int = 0
    ) -> tuple[int, bool]:
        """Start several queued jobs in one transaction, in queue order, as slots allow.

        Each decision comes from `decide(job, JobQueued)`: into resource_preparing (takes a
        slot) or cancelled (takes none). Jobs are written up to the first one that needs a slot
        when none is left. The round trips do not grow with the batch: the slot takes (each
        takes any free slot; once one finds none, so do the rest), the job compare-and-sets
        and the outbox entries are one command each, then the commit. Returns (how many were written, whether the slots ran out); when any job or
        slot moved under us, nothing is written and `BatchConflict` is raised: the caller
        applies those jobs one by one.
        """

        placing = [(job.project, _machines_given(job, decision)) for job, decision in batch]

        async def work(session: AsyncClientSession) -> tuple[int, bool]:
            # Only the jobs up to the first one its project's machine quota has no room for
            # (another planner placed some since this batch was chosen): the rest wait.
            fitting = batch[: await self._fitting_quota(placing, max_machines, session)]
            wanting = [job.id for job, decision in fitting if decision.acquire_slot]
            slots = 0
            if wanting:
                taken = await self._slots.bulk_write(
                    [UpdateOne(FREE_SLOT, {"$set": {"job_id": job_id}}) for job_id in wanting],
                    session=session,
                )
                slots = taken.matched_count  # the first `slots` of `wanting` got one
            job_ops: list[UpdateOne] = []
            events = []
            slots_ran_out = False
            for job, decision in fitting:
                if decision.acquire_slot:
                    if slots == 0:
                        slots_ran_out = True
                        break
                    slots -= 1
                job_ops.append(
                    UpdateOne(
                        {"_id": job.id, "status": job.status.value, "version": job.version},
                        _job_update(decision, now),
                    )
                )
                events.extend(decision.events)
            if not job_ops:
                return 0, slots_ran_out
            written = await self._jobs.bulk_write(job_ops, session=session)
            if written.matched_count != len(job_ops):
                raise BatchConflict
            await append_events(self._db, self._ns, events, session, now)
            return len(job_ops), slots_ran_out

        return await transact(self._client, work)
