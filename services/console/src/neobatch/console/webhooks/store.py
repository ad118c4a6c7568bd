"""WebhookStore: a project's webhook endpoints (`webhook_endpoints`, the console writes them;
the notifier writes only `status`, `disabled_reason`, `disabled_at` and its failure count) and
their delivery log (`webhook_deliveries`, the notifier's; read here)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.mongo import ensure_indexes
from neobatch.console.page_store import find_page

Document = dict[str, Any]

ENDPOINTS = "webhook_endpoints"
DELIVERIES = "webhook_deliveries"
INDEXES = [
    # A project's endpoints, newest first (the list's pages and the notifier's fan-out).
    IndexModel(
        [("project", 1), ("created_at", DESCENDING), ("_id", DESCENDING)], name="project_newest"
    ),
]
# Never sent back: the secrets (shown once, at creation or rotation).
NO_SECRETS = {"signing_secrets": 0}


class WebhookStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self._db[ENDPOINTS], INDEXES)

    async def count_endpoints(self, project: str) -> int:
        return await self._db[ENDPOINTS].count_documents({"project": project})

    async def insert_endpoint(self, doc: Document) -> None:
        """A new endpoint (its id and secret are new: an insert, not a compare-and-set)."""
        await self._db[ENDPOINTS].insert_one(doc)

    async def find_endpoint(self, endpoint_id: str, project: str) -> Document | None:
        """The project's endpoint, with its secrets (for a rotation; never answered)."""
        return await self._db[ENDPOINTS].find_one({"_id": endpoint_id, "project": project})

    async def list_endpoint_page(
        self, project: str, limit: int, after: str | None
    ) -> tuple[list[Document], bool]:
        cursor = {"_id": after} if after else None
        return await find_page(
            self._db[ENDPOINTS],
            {"project": project},
            after=cursor,
            limit=limit,
            projection=NO_SECRETS,
        )

    async def save_endpoint(
        self, endpoint_id: str, project: str, version: int, fields: Document
    ) -> bool:
        """Compare-and-set on the endpoint's `version`: False when another change won."""
        result = await self._db[ENDPOINTS].update_one(
            {"_id": endpoint_id, "project": project, "version": version},
            {"$set": fields, "$inc": {"version": 1}},
        )
        return result.modified_count == 1

    async def delete_endpoint(self, endpoint_id: str, project: str) -> bool:
        result = await self._db[ENDPOINTS].delete_one({"_id": endpoint_id, "project": project})
        return result.deleted_count == 1

    async def list_delivery_page(
        self, endpoint_id: str, limit: int, after: str | None
    ) -> tuple[list[Document], bool]:
        """The endpoint's deliveries, newest first, without their bodies."""
        cursor = {"_id": after} if after else None
        return await find_page(
            self._db[DELIVERIES],
            {"endpoint_id": endpoint_id},
            after=cursor,
            limit=limit,
            projection={"body": 0},
        )


def endpoint_doc(
    endpoint_id: str,
    project: str,
    created_by: str,
    url: str,
    name: str,
    event_types: list[str],
    sealed_secret: str,
    hint: str,
    now: datetime,
) -> Document:
    """A new endpoint; `sealed_secret` is the secret as stored (`common.sealing`)."""
    return {
        "_id": endpoint_id,
        "project": project,
        "created_by": created_by,
        "url": url,
        "name": name,
        "event_types": event_types,
        "signing_secrets": [{"secret": sealed_secret, "created_at": now, "expires_at": None}],
        "signing_secret_hint": hint,
        "status": "enabled",
        "disabled_reason": None,
        "disabled_at": None,
        "consecutive_failures": 0,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
