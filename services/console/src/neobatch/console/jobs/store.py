"""JobStore: the console's access to `jobs` (create, read, cancel request) and, read-only,
the resource-manager's `provisions` a job view shows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.contracts import TERMINAL_JOB_STATUSES, Event, JobStatus
from neobatch.common.errors import NotFound
from neobatch.common.mongo import ensure_indexes, transact
from neobatch.common.outbox import append_events
from neobatch.common.subjects import Namespace
from neobatch.common.transitions import compare_and_set
from neobatch.console.jobs.retry_rules import MAX_RETRIES_PER_JOB
from neobatch.console.page_store import find_page

Document = dict[str, Any]

JOBS = "jobs"
PROVISIONS = "provisions"
# One document per project that every job create under a queued-jobs quota writes (`insert_job`):
# two creates counting the same project's queue conflict on it, so one of them counts again.
QUEUE_GATES = "project_queue_gates"
# One document per retried job that every retry of it writes in its insert's transaction
# (`insert_job` with `check_retries`): two retries of one job conflict, so one checks again.
RETRY_GATES = "job_retry_gates"
INDEXES = [
    IndexModel(
        [("project", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
        name="project_newest_first",
    ),
    IndexModel([("batch_id", ASCENDING)], name="batch_id", unique=True),
    # The job lists: every project's (operators) and filtered by status (`?status=`), newest
    # first like a project's own list above, so a page is an index range however many jobs
    # there are.
    IndexModel([("created_at", DESCENDING), ("_id", DESCENDING)], name="newest_first"),
    IndexModel(
        [("status", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
        name="status_newest_first",
    ),
    IndexModel(
        [
            ("project", ASCENDING),
            ("status", ASCENDING),
            ("created_at", DESCENDING),
            ("_id", DESCENDING),
        ],
        name="project_status_newest_first",
    ),
    # A project's queued jobs (the queued-jobs quota); the planner's fair queue reads the same
    # index, which it declares too.
    IndexModel(
        [("status", ASCENDING), ("project", ASCENDING), ("created_at", ASCENDING), ("_id", 1)],
        name="status_project_created",
    ),
    # A job's retries (issue 18): its `retried_by` and the one-running-retry rule.
    IndexModel([("retry_of", ASCENDING), ("created_at", ASCENDING)], name="retry_of", sparse=True),
]
# Fields of a retry the rules compare (`retry_rules.check_siblings`).
_RETRY_FIELDS = {"_id": 1, "status": 1, "retry_overrides": 1, "created_at": 1, "retry_of": 1}
_TERMINAL = sorted(status.value for status in TERMINAL_JOB_STATUSES)


def _scoped(query: Document, project: str | None) -> Document:
    return query if project is None else {**query, "project": project}


class JobStore:
    def __init__(
        self,
        client: AsyncMongoClient[Document],
        db: AsyncDatabase[Document],
        ns: Namespace,
        notify_outbox: Callable[[], None],
    ) -> None:
        self._client = client
        self._db = db
        self._ns = ns
        self._notify_outbox = notify_outbox

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self._db[JOBS], INDEXES)

    async def insert_job(
        self,
        job: Document,
        events: Sequence[Event],
        now: datetime,
        *,
        queued_limit: int = 0,
        check_retries: Callable[[list[Document]], None] | None = None,
    ) -> bool:
        """Insert the job and its events in one transaction (DESIGN rule 1), then wake the
        relay. An insert, not a compare-and-set: the job's ids are new, so it cannot lose.

        With `queued_limit` > 0 a queued job is inserted only while its project has fewer
        queued jobs (False: nothing written). Exact under concurrency: the count and the insert
        share the transaction, which also writes the project's gate document, so of two creates
        that counted the same queue one hits a write conflict and is retried (counting again).

        A retry (`retry_of` set) is inserted only when `check_retries`, given the original's
        retries read in the transaction, raises nothing; the original's gate document makes
        the read exact the same way.
        """
        project = job.get("project")
        gated = queued_limit > 0 and job["status"] == JobStatus.QUEUED.value

        async def work(session: AsyncClientSession) -> bool:
            if gated:
                queued = {"status": JobStatus.QUEUED.value, "project": project}
                count = await self._db[JOBS].count_documents(
                    queued, limit=queued_limit, session=session
                )
                if count >= queued_limit:
                    return False
                await self._db[QUEUE_GATES].update_one(
                    {"_id": project}, {"$inc": {"creates": 1}}, upsert=True, session=session
                )
            if check_retries is not None and job.get("retry_of"):
                check_retries(await self._retries_of(job["retry_of"], session))
                await self._db[RETRY_GATES].update_one(
                    {"_id": job["retry_of"]}, {"$inc": {"retries": 1}}, upsert=True, session=session
                )
            await self._db[JOBS].insert_one(job, session=session)
            await append_events(self._db, self._ns, events, session, now)
            return True

        inserted = await transact(self._client, work)
        if inserted:
            self._notify_outbox()
        return inserted

    async def get_job(self, job_id: str, project: str | None) -> Document:
        """The job with this id in `project` (None: any project, for operators); another
        project's job is as missing (404)."""
        doc = await self._db[JOBS].find_one(_scoped({"_id": job_id}, project))
        if doc is None:
            raise NotFound(f"job {job_id!r} not found", code="job_not_found")
        return doc

    async def find_job(self, job_id: str, project: str | None) -> Document | None:
        """`get_job`, or None."""
        return await self._db[JOBS].find_one(_scoped({"_id": job_id}, project))

    async def list_retries(self, job_id: str) -> list[Document]:
        """The job's retries, oldest first (a few fields each)."""
        return await self._retries_of(job_id, None)

    async def list_retry_ids(self, job_ids: Sequence[str]) -> dict[str, list[str]]:
        """The ids of the retries of each of a page of jobs, oldest first (one read; each job
        has at most `MAX_RETRIES_PER_JOB`, so the read is bounded by the page)."""
        found: dict[str, list[str]] = {}
        wanted = sorted(set(job_ids))
        if not wanted:
            return found
        cursor = (
            self._db[JOBS]
            .find({"retry_of": {"$in": wanted}}, {"_id": 1, "retry_of": 1, "created_at": 1})
            .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
            .limit(len(wanted) * MAX_RETRIES_PER_JOB)
        )
        async for doc in cursor:
            found.setdefault(doc["retry_of"], []).append(doc["_id"])
        return found

    async def _retries_of(self, job_id: str, session: AsyncClientSession | None) -> list[Document]:
        cursor = (
            self._db[JOBS]
            .find({"retry_of": job_id}, _RETRY_FIELDS, session=session)
            .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
            .limit(MAX_RETRIES_PER_JOB + 1)
        )
        return await cursor.to_list(None)

    async def get_batch(self, batch_id: str, project: str | None) -> Document:
        """The job whose OpenAI batch id is `batch_id`, in `project` (None: any project)."""
        doc = await self._db[JOBS].find_one(_scoped({"batch_id": batch_id}, project))
        if doc is None:
            raise NotFound(f"batch {batch_id!r} not found", code="batch_not_found")
        return doc

    async def count_queued(self, project: str, up_to: int) -> int:
        """How many of `project`'s jobs are queued, counting no further than `up_to`."""
        query = {"status": JobStatus.QUEUED.value, "project": project}
        return await self._db[JOBS].count_documents(query, limit=up_to)

    async def list_jobs(
        self,
        project: str | None,
        limit: int,
        after_job_id: str | None,
        statuses: Sequence[str] = (),
    ) -> tuple[list[Document], bool]:
        """Newest first; `after_job_id` is the last job of the previous page; `statuses`
        (when given) keeps the jobs in one of them."""
        after = {"_id": after_job_id} if after_job_id else None
        return await self._page(project, limit, after, statuses)

    async def list_batches(
        self, project: str | None, limit: int, after_batch_id: str | None
    ) -> tuple[list[Document], bool]:
        """`list_jobs`, paged by batch id."""
        after = {"batch_id": after_batch_id} if after_batch_id else None
        return await self._page(project, limit, after)

    async def _page(
        self,
        project: str | None,
        limit: int,
        after: Document | None,
        statuses: Sequence[str] = (),
    ) -> tuple[list[Document], bool]:
        """A page of `project`'s jobs (None: every project's, for operators), newest first,
        after the job `after` selects (an unknown one, or one outside the scope, gives an
        empty page; one that has left `statuses` since still marks where the page starts);
        and whether more follow."""
        scope = _scoped({"status": {"$in": list(statuses)}} if statuses else {}, project)
        return await find_page(
            self._db[JOBS], scope, after=after, limit=limit, cursor_scope=_scoped({}, project)
        )

    async def save_cancel_request(
        self, job_id: str, events: Sequence[Event], now: datetime
    ) -> bool:
        """Record the cancel request once, with its events; False if terminal or already asked."""

        async def work(session: AsyncClientSession) -> bool:
            won = await compare_and_set(
                self._db[JOBS],
                job_id,
                {"status": {"$nin": _TERMINAL}, "cancel_requested_at": None},
                {"$set": {"cancel_requested_at": now}},
                session=session,
            )
            if won:
                await append_events(self._db, self._ns, events, session, now)
            return won

        won = await transact(self._client, work)
        if won:
            self._notify_outbox()
        return won

    async def list_job_provisions(self, job_ids: Sequence[str]) -> dict[str, list[Document]]:
        """Every provision of a page of jobs (what their bills are made of), by job id."""
        wanted = sorted(set(job_ids))
        found: dict[str, list[Document]] = {job_id: [] for job_id in wanted}
        if not wanted:
            return found
        async for doc in self._db[PROVISIONS].find({"job_id": {"$in": wanted}}):
            found.setdefault(doc["job_id"], []).append(doc)
        return found
