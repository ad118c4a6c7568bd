"""JobStore: the planner's only MongoDB access. Every write is compare-and-set with its events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.contracts import JobStatus
from neobatch.common.errors import NotFound
from neobatch.common.mongo import transact
from neobatch.common.outbox import append_events
from neobatch.common.subjects import Namespace
from neobatch.common.transitions import compare_and_set
from neobatch.planner.jobs import Decision, Job

JOBS = "jobs"


def job_from_doc(doc: dict[str, Any]) -> Job:
    return Job(
        id=doc["_id"],
        status=JobStatus(doc["status"]),
        version=doc.get("version", 0),
        batch_id=doc["batch_id"],
        provision_id=doc.get("provision_id"),
        batch_handed_over=bool(doc.get("batch_handed_over")),
        cancel_requested=doc.get("cancel_requested_at") is not None,
        template_spec=doc.get("template_spec") or {},
        serving_name=doc.get("serving_name") or "",
        endpoint=doc.get("endpoint") or "",
        input_dataset=doc.get("input_dataset") or "",
        created_by=doc.get("created_by") or "",
        replicas=int((doc.get("resource_request") or {}).get("replicas") or 1),
        provider=doc.get("provider") or None,
        completion_window_seconds=float(doc.get("completion_window_seconds") or 24 * 3600),
    )


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

    async def get_job(self, job_id: str) -> Job:
        doc = await self._jobs.find_one({"_id": job_id})
        if doc is None:
            raise NotFound(f"job {job_id!r} not found", code="job_not_found")
        return job_from_doc(doc)

    async def save_decision(self, job: Job, decision: Decision, now: datetime) -> bool:
        """Apply `decision` made from `job` if the job has not moved since; events go with it."""
        fields = dict(decision.fields)
        if decision.status is not None:
            fields["status"] = decision.status.value
        fields["updated_at"] = now
        fields = {k: msgspec.to_builtins(v, builtin_types=(datetime,)) for k, v in fields.items()}

        async def work(session: AsyncClientSession) -> bool:
            won = await compare_and_set(
                self._jobs,
                job.id,
                {"status": job.status.value, "version": job.version},
                {"$set": fields},
                session=session,
            )
            if won:
                await append_events(self._db, self._ns, decision.events, session, now)
            return won

        return await transact(self._client, work)
