"""ConsoleStore: the console's only access to MongoDB (documents, GridFS files, the outbox)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from neobatch.common import filestore
from neobatch.common.contracts import TERMINAL_JOB_STATUSES, Event
from neobatch.common.errors import Conflict, NotFound
from neobatch.common.filestore import FileInfo
from neobatch.common.mongo import ensure_indexes, transact
from neobatch.common.outbox import append_events
from neobatch.common.subjects import Namespace
from neobatch.common.transitions import compare_and_set
from neobatch.console import catalog

Document = dict[str, Any]

MODELS = "models"
TEMPLATES = "templates"
JOBS = "jobs"
PROVISIONS = "provisions"
API_KEYS = "api_keys"
FILES = f"{filestore.BUCKET}.files"

_INDEXES: dict[str, list[IndexModel]] = {
    TEMPLATES: [
        # Backs the 409 on a duplicate template: the check and the insert cannot race.
        IndexModel(
            [("model_id", ASCENDING), ("name", ASCENDING), ("version", ASCENDING)],
            unique=True,
            name="model_name_version",
        ),
        IndexModel(
            [("name", ASCENDING), ("status", ASCENDING), ("created_at", DESCENDING)],
            name="resolve",
        ),
    ],
    JOBS: [
        IndexModel(
            [("project", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
            name="project_newest_first",
        ),
        IndexModel([("batch_id", ASCENDING)], name="batch_id", unique=True),
    ],
    API_KEYS: [IndexModel([("hash", ASCENDING)], name="hash", unique=True)],
}
_TERMINAL = sorted(status.value for status in TERMINAL_JOB_STATUSES)


class ConsoleStore:
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
        for collection, indexes in _INDEXES.items():
            await ensure_indexes(self._db[collection], indexes)

    async def ping(self, timeout_seconds: float = 2.0) -> bool:
        try:
            async with asyncio.timeout(timeout_seconds):
                await self._db.command("ping")
        except Exception:
            return False
        return True

    # --- models and templates ----------------------------------------------------------------

    async def insert_model(self, doc: Document) -> None:
        try:
            await self._db[MODELS].insert_one(doc)
        except DuplicateKeyError:
            raise Conflict(f"model {doc['_id']!r} already exists", code="model_exists") from None

    async def find_model(self, model_id: str) -> Document | None:
        return await self._db[MODELS].find_one({"_id": model_id})

    async def get_model(self, model_id: str) -> Document:
        doc = await self.find_model(model_id)
        if doc is None:
            raise NotFound(f"model {model_id!r} not found", code="model_not_found")
        return doc

    async def list_offers(self, family: str | None, available: bool | None) -> list[Document]:
        """The resource-manager's offers cache (collection `offers`), cheapest first."""
        query: Document = {}
        if family:
            query["family"] = family.upper()
        if available is not None:
            query["available"] = available
        cursor = self._db["offers"].find(query).sort([("price_per_hour", 1), ("_id", 1)])
        return [doc async for doc in cursor]

    async def list_models(self, search: str = "", category: str = "") -> list[Document]:
        query: Document = {}
        if search:
            query["name"] = {"$regex": re.escape(search), "$options": "i"}
        if category:
            query["categories"] = {"$regex": f"^{re.escape(category)}$", "$options": "i"}
        return await self._db[MODELS].find(query).sort([("created_at", DESCENDING)]).to_list(None)

    async def insert_template(self, doc: Document) -> None:
        try:
            await self._db[TEMPLATES].insert_one(doc)
        except DuplicateKeyError:
            raise Conflict(
                f"template {doc['name']!r} version {doc['version']!r} already exists "
                f"for model {doc['model_id']!r}",
                code="template_exists",
            ) from None

    async def list_templates(
        self, model_id: str, *, name: str = "", status: str = ""
    ) -> list[Document]:
        query: Document = {"model_id": model_id}
        if name:
            query["name"] = name
        if status:
            query["status"] = status
        cursor = self._db[TEMPLATES].find(query)
        return await cursor.sort([("created_at", DESCENDING)]).to_list(None)

    async def get_template(self, model_id: str, template_id: str) -> Document:
        doc = await self._db[TEMPLATES].find_one({"_id": template_id, "model_id": model_id})
        if doc is None:
            raise NotFound(
                f"template {template_id!r} not found for model {model_id!r}",
                code="template_not_found",
            )
        return doc

    async def find_template(self, name: str, version: str, model_id: str) -> Document | None:
        """An exact (name, version), or with no version the highest active version of `name`.

        `model_id` narrows the search when given (AIBrix: templates are named per model).
        """
        query: Document = {"name": name}
        if model_id:
            query["model_id"] = model_id
        if version:
            query["version"] = version
            cursor = self._db[TEMPLATES].find(query).sort([("created_at", DESCENDING)]).limit(1)
            found = await cursor.to_list(1)
            return found[0] if found else None
        query["status"] = "active"
        # A name has a handful of versions: ordering them in Python keeps AIBrix's numeric order.
        return catalog.latest_version(await self._db[TEMPLATES].find(query).to_list(None))

    # --- API keys ----------------------------------------------------------------------------

    async def find_api_key(self, key_hash: str) -> Document | None:
        """The live (not revoked) key with this hash."""
        return await self._db[API_KEYS].find_one({"hash": key_hash, "revoked_at": None})

    async def insert_api_key(self, doc: Document) -> None:
        await self._db[API_KEYS].insert_one(doc)

    async def seed_api_key(self, doc: Document) -> None:
        """Create or re-point the key with this id (the dev key), keeping a revocation."""
        fixed = {k: doc[k] for k in ("hash", "project", "name")}
        await self._db[API_KEYS].update_one(
            {"_id": doc["_id"]},
            {"$set": fixed, "$setOnInsert": {"created_at": doc["created_at"], "revoked_at": None}},
            upsert=True,
        )

    async def list_api_keys(self) -> list[Document]:
        cursor = self._db[API_KEYS].find({}, {"hash": 0}).sort([("created_at", ASCENDING)])
        return await cursor.to_list(None)

    async def revoke_api_key(self, key_id: str, now: datetime) -> bool:
        result = await self._db[API_KEYS].update_one(
            {"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": now}}
        )
        return result.modified_count == 1

    async def _project_key_ids(self, project: str) -> list[str]:
        return [d["_id"] for d in await self._db[API_KEYS].find({"project": project}).to_list(None)]

    # --- files -------------------------------------------------------------------------------

    async def save_file(
        self,
        file_id: str,
        filename: str,
        chunks: AsyncIterator[bytes],
        *,
        purpose: str,
        owner: str,
    ) -> FileInfo:
        """Stream `chunks` into the file store; if anything fails, nothing is left behind."""
        try:
            return await filestore.save_file(
                self._db, file_id, filename, chunks, purpose=purpose, owner=owner
            )
        except BaseException:
            # save_file aborts its upload stream, but a failure while closing it could still
            # leave a partial file; deleting an absent file is harmless.
            with contextlib.suppress(Exception):
                await filestore.delete_file(self._db, file_id)
            raise

    async def set_file_project(self, file_id: str, project: str) -> None:
        await self._db[FILES].update_one({"_id": file_id}, {"$set": {"metadata.project": project}})

    async def find_file(self, file_id: str, project: str) -> FileInfo | None:
        """The file if it belongs to `project`: uploads carry their project; files the
        runtime-agent writes carry the owner key, whose project decides."""
        doc = await self._db[FILES].find_one({"_id": file_id})
        if doc is None:
            return None
        meta = doc.get("metadata") or {}
        owner_project = meta.get("project")
        if owner_project is None and meta.get("owner"):
            key = await self._db[API_KEYS].find_one({"_id": meta["owner"]}, {"project": 1})
            owner_project = key["project"] if key else None
        if owner_project != project:
            return None
        return await filestore.find_file(self._db, file_id)

    async def list_files(
        self, project: str, *, purpose: str, limit: int, after: str | None, ascending: bool
    ) -> tuple[list[FileInfo], bool]:
        keys = await self._project_key_ids(project)
        query: Document = {
            "$or": [
                {"metadata.project": project},
                {"metadata.project": None, "metadata.owner": {"$in": keys}},
            ]
        }
        if purpose:
            query["metadata.purpose"] = purpose
        order = ASCENDING if ascending else DESCENDING
        if after:
            cursor_doc = await self._db[FILES].find_one({"_id": after}, {"uploadDate": 1})
            if cursor_doc is None:
                return [], False
            query = {"$and": [query, _after(cursor_doc["uploadDate"], after, "uploadDate", order)]}
        cursor = self._db[FILES].find(query).sort([("uploadDate", order), ("_id", order)])
        docs = await cursor.limit(limit + 1).to_list(limit + 1)
        infos = [await filestore.find_file(self._db, d["_id"]) for d in docs[:limit]]
        return [i for i in infos if i is not None], len(docs) > limit

    async def delete_file(self, file_id: str) -> bool:
        return await filestore.delete_file(self._db, file_id)

    def iter_lines(self, file_id: str) -> AsyncIterator[bytes]:
        return filestore.iter_lines(self._db, file_id)

    def iter_file(self, file_id: str) -> AsyncIterator[bytes]:
        return filestore.iter_file(self._db, file_id)

    # --- jobs --------------------------------------------------------------------------------

    async def insert_job(self, doc: Document, events: Sequence[Event], now: datetime) -> None:
        """Insert the job and its events in one transaction (DESIGN rule 1), then wake the relay."""

        async def work(session: AsyncClientSession) -> None:
            await self._db[JOBS].insert_one(doc, session=session)
            await append_events(self._db, self._ns, events, session, now)

        await transact(self._client, work)
        self._notify_outbox()

    async def get_job(self, job_id: str, project: str, *, by: str = "_id") -> Document:
        """The job with this id (`by="batch_id"`: this batch id) in `project`; else 404."""
        doc = await self._db[JOBS].find_one({by: job_id, "project": project})
        if doc is None:
            if by == "batch_id":
                raise NotFound(f"batch {job_id!r} not found", code="batch_not_found")
            raise NotFound(f"job {job_id!r} not found", code="job_not_found")
        return doc

    async def list_jobs(
        self, project: str, limit: int, after: str | None, *, by: str = "_id"
    ) -> tuple[list[Document], bool]:
        """Newest first; `after` is the last id (`by`) of the previous page (unknown → empty)."""
        query: Document = {"project": project}
        if after:
            cursor_doc = await self._db[JOBS].find_one(
                {by: after, "project": project}, {"created_at": 1}
            )
            if cursor_doc is None:
                return [], False
            query.update(_after(cursor_doc["created_at"], cursor_doc["_id"], "created_at", -1))
        cursor = self._db[JOBS].find(query).sort([("created_at", DESCENDING), ("_id", DESCENDING)])
        docs = await cursor.limit(limit + 1).to_list(limit + 1)
        return docs[:limit], len(docs) > limit

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

    async def find_provisions(self, provision_ids: Sequence[str | None]) -> dict[str, Document]:
        wanted = sorted({pid for pid in provision_ids if pid})
        if not wanted:
            return {}
        docs = await self._db[PROVISIONS].find({"_id": {"$in": wanted}}).to_list(None)
        return {doc["_id"]: doc for doc in docs}

    async def find_provision(self, provision_id: str | None) -> Document | None:
        if not provision_id:
            return None
        return await self._db[PROVISIONS].find_one({"_id": provision_id})


def _after(at: Any, doc_id: str, field: str, order: int) -> Document:
    """Rows strictly after (`field`, _id) = (at, doc_id) in the given sort order."""
    op = "$gt" if order == ASCENDING else "$lt"
    return {"$or": [{field: {op: at}}, {field: at, "_id": {op: doc_id}}]}
