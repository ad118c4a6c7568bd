"""DeliveryStore: the notifier's MongoDB code. It owns `webhook_deliveries` (one document per
(endpoint, webhook), outbox-style: its `webhook_id` fixed at creation, its attempts, the next
one's time, a lease while in flight) and, on `webhook_endpoints` (the console's), only the
fields `status`, `disabled_reason`, `disabled_at` and `consecutive_failures`. It reads `jobs`
for a job's project and batch id (both fixed at creation)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.leases import claim_one
from neobatch.common.mongo import ensure_indexes
from neobatch.notifier.policy import KEPT_ATTEMPTS

Document = dict[str, Any]

DELIVERIES = "webhook_deliveries"
ENDPOINTS = "webhook_endpoints"
PENDING = "pending"
INDEXES = [
    # Due deliveries, oldest due first (the delivery loop's claim).
    IndexModel([("status", ASCENDING), ("next_attempt_at", ASCENDING)], name="due"),
    # Per-batch order: an endpoint's earlier pending deliveries of the same job.
    IndexModel(
        [
            ("endpoint_id", ASCENDING),
            ("job_id", ASCENDING),
            ("status", ASCENDING),
            ("event_at", ASCENDING),
        ],
        name="endpoint_job_order",
    ),
    # The console's delivery log of an endpoint, newest first.
    IndexModel(
        [("endpoint_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
        name="endpoint_newest",
    ),
]


class DeliveryStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db
        self._deliveries = db[DELIVERIES]
        self._endpoints = db[ENDPOINTS]

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self._deliveries, INDEXES)

    async def find_job(self, job_id: str) -> Document | None:
        return await self._db["jobs"].find_one({"_id": job_id}, {"project": 1, "batch_id": 1})

    async def list_enabled_endpoints(self, project: str) -> list[Document]:
        """The project's enabled endpoints (id and event types; no secrets)."""
        cursor = self._endpoints.find({"project": project, "status": "enabled"}, {"event_types": 1})
        return await cursor.to_list(None)

    async def find_endpoint(self, endpoint_id: str) -> Document | None:
        """The endpoint with its secrets (to sign), or None once deleted."""
        return await self._endpoints.find_one({"_id": endpoint_id})

    async def save_new_delivery(self, doc: Document) -> bool:
        """Store a delivery unless it exists (a replayed event adds nothing); True if new."""
        result = await self._deliveries.update_one(
            {"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True
        )
        return result.upserted_id is not None

    async def claim_due(self, owner: str, now: datetime, ttl_seconds: float) -> Document | None:
        """One due pending delivery, leased to `owner`."""
        return await claim_one(
            self._deliveries,
            {"status": PENDING, "next_attempt_at": {"$lte": now}},
            owner,
            now,
            ttl_seconds,
            sort=[("next_attempt_at", ASCENDING)],
        )

    async def find_earlier_pending(self, doc: Document) -> Document | None:
        """A pending delivery of the same job to the same endpoint from an earlier event."""
        return await self._deliveries.find_one(
            {
                "endpoint_id": doc["endpoint_id"],
                "job_id": doc["job_id"],
                "status": PENDING,
                "event_at": {"$lt": doc["event_at"]},
            },
            {"next_attempt_at": 1},
            sort=[("event_at", ASCENDING)],
        )

    async def save_postponed(self, delivery_id: str, owner: str, until: datetime) -> None:
        """Put back a delivery that must wait for an earlier one (per-batch order)."""
        await self._deliveries.update_one(
            {"_id": delivery_id, "lease_owner": owner},
            {"$set": {"next_attempt_at": until, "lease_owner": None, "lease_until": None}},
        )

    async def save_attempt(
        self,
        delivery_id: str,
        owner: str,
        attempt: Document,
        fields: Document,
    ) -> bool:
        """Record an attempt and its outcome and release the lease, if still ours (False: the
        lease expired and another notifier took the delivery over)."""
        result = await self._deliveries.update_one(
            {"_id": delivery_id, "lease_owner": owner},
            {
                "$set": {**fields, "lease_owner": None, "lease_until": None},
                "$push": {"attempts": {"$each": [attempt], "$slice": -KEPT_ATTEMPTS}},
                "$inc": {"attempt_count": 1},
            },
        )
        return result.modified_count == 1

    async def save_closed(self, delivery_id: str, owner: str, status: str, error: str) -> None:
        """End a delivery without sending it (its endpoint is gone or disabled)."""
        await self._deliveries.update_one(
            {"_id": delivery_id, "lease_owner": owner},
            {"$set": {"status": status, "error": error, "lease_owner": None, "lease_until": None}},
        )

    async def save_endpoint_success(self, endpoint_id: str) -> None:
        await self._endpoints.update_one(
            {"_id": endpoint_id, "consecutive_failures": {"$gt": 0}},
            {"$set": {"consecutive_failures": 0}},
        )

    async def save_endpoint_failure(self, endpoint_id: str) -> int:
        """Count a delivery that ended failed; the endpoint's consecutive failures."""
        # update_one then a read, not find_one_and_update (it scans on secantus; leases.py).
        await self._endpoints.update_one(
            {"_id": endpoint_id}, {"$inc": {"consecutive_failures": 1}}
        )
        doc = await self._endpoints.find_one({"_id": endpoint_id}, {"consecutive_failures": 1})
        return int((doc or {}).get("consecutive_failures") or 0)

    async def save_endpoint_disabled(self, endpoint_id: str, reason: str, now: datetime) -> bool:
        result = await self._endpoints.update_one(
            {"_id": endpoint_id, "status": "enabled"},
            {"$set": {"status": "disabled", "disabled_reason": reason, "disabled_at": now}},
        )
        return result.modified_count == 1

    async def count_pending(self) -> int:
        return await self._deliveries.count_documents({"status": PENDING})

    async def oldest_due_age(self, now: datetime) -> float:
        doc = await self._deliveries.find_one(
            {"status": PENDING, "next_attempt_at": {"$lte": now}},
            {"next_attempt_at": 1},
            sort=[("next_attempt_at", ASCENDING)],
        )
        if not doc:
            return 0.0
        at = doc["next_attempt_at"]
        return max(0.0, (now - at).total_seconds()) if at.tzinfo else 0.0
