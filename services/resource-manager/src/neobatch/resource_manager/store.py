"""ProvisionStore: the resource-manager's only MongoDB access."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from pymongo import ASCENDING, AsyncMongoClient, IndexModel, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from neobatch.common.contracts import Event, ProvisionStatus, ResourceRequest
from neobatch.common.leases import claim_many
from neobatch.common.mongo import ensure_indexes, transact
from neobatch.common.outbox import append_events
from neobatch.common.subjects import Namespace
from neobatch.common.transitions import compare_and_set, compare_and_set_with_events
from neobatch.resource_manager.offers import Offer
from neobatch.resource_manager.providers.base import Machine
from neobatch.resource_manager.provisions import ACTIVE, RELEASABLE, Decision, Provision

PROVISIONS = "provisions"
OFFERS = "offers"  # the catalog cache the console serves at GET /api/v1/catalog
# Provisions that own their machine; any other machine with our prefix is an orphan.
LIVE = frozenset(ACTIVE | {ProvisionStatus.RUNNING})
INDEXES = [
    IndexModel(
        [("status", ASCENDING), ("next_attempt_at", ASCENDING), ("created_at", ASCENDING)],
        name="active",
    ),
    # `next_attempt_at` is a date exactly while the provision is ACTIVE (None once settled), so
    # the driver's claim is one bounded range on this index (a `$in` on status, or `$lte` alone,
    # scans every provision on our test database).
    IndexModel([("next_attempt_at", ASCENDING)], name="due"),
    IndexModel([("job_id", ASCENDING)], name="job"),
]
# The oldest `next_attempt_at` can be: makes the due query a bounded range.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Conflict(Exception):
    """A batched compare-and-set lost: the batch is undone and saved one by one."""


def _decision_fields(provision: Provision, decision: Decision, now: datetime) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "status": decision.status.value,
        "updated_at": now,
        "lease_owner": None,
        "lease_until": None,
        "next_attempt_at": now + timedelta(seconds=decision.retry_seconds)
        if decision.status in ACTIVE
        else None,
    }
    if decision.provider_resource_id:
        fields["provider_resource_id"] = decision.provider_resource_id
    if decision.provider:
        fields["provider"] = decision.provider
    if decision.offer is not None:
        fields["offer"] = msgspec.to_builtins(decision.offer)
        if decision.placement is not None:
            fields["placement"] = msgspec.to_builtins(decision.placement)
    elif decision.clear_offer:
        fields["offer"] = None
    if decision.attempts is not None:
        fields["attempts"] = decision.attempts
    if decision.machine is not None:
        fields["region"] = decision.machine.region
        if decision.machine.endpoint is not None:
            fields["endpoint"] = msgspec.to_builtins(decision.machine.endpoint)
    if decision.machine is not None and provision.provider_resource_id is None:
        fields.update(lease_fields(provision, decision.machine, now))
    if decision.error_code:
        fields["error_code"] = decision.error_code
        fields["error_message"] = decision.error_message
    if decision.status is not provision.status:
        fields[f"{decision.status.value}_at"] = now
    return fields


def lease_fields(provision: Provision, machine: Machine, now: datetime) -> dict[str, Any]:
    """What the bill needs, recorded when the provider first answers with the machine (the
    create call accepted): when, where and at what price it was leased."""
    offer = provision.offer
    price = offer.price_per_hour if offer is not None else (machine.price_per_hour or 0.0)
    return {
        "leased_at": now,
        "lease": {
            "provider": offer.provider if offer is not None else provision.provider,
            "gpu_type": offer.gpu_type if offer is not None else provision.request.accelerator_type,
            "gpu_count": offer.gpu_count
            if offer is not None
            else provision.request.accelerator_count,
            "region": offer.region if offer is not None else machine.region,
            "price_per_hour": price,
        },
    }


def _due(now: datetime) -> dict[str, Any]:
    return {"next_attempt_at": {"$gte": EPOCH, "$lte": now}}


def provision_from_doc(doc: dict[str, Any]) -> Provision:
    return Provision(
        id=doc["_id"],
        job_id=doc["job_id"],
        status=ProvisionStatus(doc["status"]),
        version=doc.get("version", 0),
        provider=doc["provider"],
        resource_name=doc["resource_name"],
        request=msgspec.convert(doc["request"], ResourceRequest),
        provider_resource_id=doc.get("provider_resource_id"),
        deadline_at=doc.get("deadline_at"),
        offer=msgspec.convert(doc["offer"], Offer) if doc.get("offer") else None,
        attempts=list(doc.get("attempts") or []),
        leased_at=doc.get("leased_at"),
    )


class ProvisionStore:
    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        db: AsyncDatabase[dict[str, Any]],
        ns: Namespace,
    ) -> None:
        self._client = client
        self._db = db
        self._provisions = db[PROVISIONS]
        self._ns = ns

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self._provisions, INDEXES)

    async def find_provision(self, provision_id: str) -> Provision | None:
        doc = await self._provisions.find_one({"_id": provision_id})
        return provision_from_doc(doc) if doc else None

    async def find_ran_job(self, job_id: str) -> Provision | None:
        """The job's latest provision that reached running on a recorded offer, if any."""
        doc = await self._provisions.find_one(
            {"job_id": job_id, "offer": {"$ne": None}, "running_at": {"$ne": None}},
            sort=[("running_at", -1)],
        )
        return provision_from_doc(doc) if doc else None

    async def insert_requested(
        self,
        *,
        provision_id: str,
        job_id: str,
        provider: str,
        resource_name: str,
        request: ResourceRequest,
        deadline_at: datetime | None,
        now: datetime,
        lease_owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> Provision | None:
        """Record a new provision before any provider call (DESIGN rule 5); None if it exists.

        With `lease_owner` it is recorded already leased to that driver, which steps it
        without claiming it (and anyone may claim it once the lease expires); the returned
        provision is then `fresh`, ready to be handed to that driver in memory.
        """
        try:
            await self._provisions.insert_one(
                {
                    "_id": provision_id,
                    "job_id": job_id,
                    "status": ProvisionStatus.REQUESTED.value,
                    "version": 0,
                    "provider": provider,
                    "resource_name": resource_name,
                    "request": msgspec.to_builtins(request),
                    "provider_resource_id": None,
                    "deadline_at": deadline_at,
                    # Always a date while active: the claim query then needs no `$or`.
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                    "lease_owner": lease_owner,
                    "lease_until": lease_until,
                }
            )
        except DuplicateKeyError:
            return None
        return Provision(
            id=provision_id,
            job_id=job_id,
            status=ProvisionStatus.REQUESTED,
            provider=provider,
            resource_name=resource_name,
            request=request,
            deadline_at=deadline_at,
            fresh=lease_owner is not None,
            lease_until=lease_until,
        )

    async def claim_due(
        self, claim_token: str, now: datetime, ttl_seconds: float, limit: int
    ) -> list[Provision]:
        """Claim up to `limit` due provisions, oldest first (usually two round trips)."""
        docs = await claim_many(
            self._provisions,
            _due(now),
            claim_token,
            now,
            ttl_seconds,
            sort=[("created_at", ASCENDING)],
            limit=limit,
        )
        return [provision_from_doc(doc) for doc in docs]

    async def save_decision(self, provision: Provision, decision: Decision, now: datetime) -> bool:
        """Apply `decision` made from `provision` if it has not moved since; events go with it."""
        expected = {"status": provision.status.value, "version": provision.version}
        update = {"$set": _decision_fields(provision, decision, now)}
        if not decision.events:  # one write, no transaction needed
            return await compare_and_set(self._provisions, provision.id, expected, update)
        return await compare_and_set_with_events(
            self._client,
            self._provisions,
            provision.id,
            expected,
            update,
            events=decision.events,
            ns=self._ns,
            now=now,
        )

    async def save_decisions(
        self, saves: Sequence[tuple[Provision, Decision]], now: datetime
    ) -> list[bool]:
        """Several `save_decision`s in one transaction (three round trips in all) when all win.

        Each provision's change and its events still commit together (DESIGN rule 1). If any
        compare-and-set loses, nothing is written and each is saved on its own.
        """
        if len(saves) == 1:
            provision, decision = saves[0]
            return [await self.save_decision(provision, decision, now)]
        ops = [
            UpdateOne(
                {
                    "_id": provision.id,
                    "status": provision.status.value,
                    "version": provision.version,
                },
                {"$set": _decision_fields(provision, decision, now), "$inc": {"version": 1}},
            )
            for provision, decision in saves
        ]
        events = [event for _, decision in saves for event in decision.events]

        async def work(session: AsyncClientSession) -> None:
            written = await self._provisions.bulk_write(ops, ordered=True, session=session)
            if written.matched_count != len(ops):
                raise _Conflict  # aborts the transaction: saved one by one below
            await append_events(self._db, self._ns, events, session, now)

        try:
            await transact(self._client, work)
        except _Conflict:
            return [await self.save_decision(p, decision, now) for p, decision in saves]
        return [True] * len(saves)

    async def request_release(
        self,
        provision: Provision,
        reason: str,
        now: datetime,
        lease_owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> Provision | None:
        """releasing, compare-and-set on the version read; None when the provision moved on.

        One write with no event, so no transaction. With `lease_owner`, the same write also
        leases the provision to that driver when nobody holds it (the returned provision then
        carries `lease_until`), and that driver steps it without claiming it.
        """
        fields: dict[str, Any] = {
            "status": ProvisionStatus.RELEASING.value,
            "release_reason": reason,
            "releasing_at": now,
            "updated_at": now,
            "next_attempt_at": now,
        }
        expected: dict[str, Any] = {
            "status": {"$in": [s.value for s in RELEASABLE]},
            "version": provision.version,
        }
        released = msgspec.structs.replace(
            provision, status=ProvisionStatus.RELEASING, version=provision.version + 1
        )
        if lease_owner is not None and lease_until is not None:
            leased = {**fields, "lease_owner": lease_owner, "lease_until": lease_until}
            # Unleased (null) or expired: not leased until now or later.
            free = {**expected, "lease_until": {"$not": {"$gte": now}}}
            if await compare_and_set(self._provisions, provision.id, free, {"$set": leased}):
                return msgspec.structs.replace(released, lease_until=lease_until)
        if await compare_and_set(self._provisions, provision.id, expected, {"$set": fields}):
            return released
        return None

    async def insert_released_tombstone(
        self, provision_id: str, job_id: str, events: Sequence[Event], now: datetime
    ) -> bool:
        """A release that arrived before its request: the request will then find it settled."""

        async def work(session: AsyncClientSession) -> bool:
            await self._provisions.insert_one(
                {
                    "_id": provision_id,
                    "job_id": job_id,
                    "status": ProvisionStatus.RELEASED.value,
                    "version": 0,
                    "provider": "",
                    "resource_name": "",
                    "request": {"accelerator_type": ""},
                    "created_at": now,
                    "updated_at": now,
                    "released_at": now,
                },
                session=session,
            )
            await append_events(self._db, self._ns, events, session, now)
            return True

        try:
            return await transact(self._client, work)
        except DuplicateKeyError:
            return False

    async def list_live(self) -> list[Provision]:
        """Provisions that own their machine (active or running): the reconciler's owners."""
        cursor = self._provisions.find({"status": {"$in": [s.value for s in LIVE]}})
        return [provision_from_doc(doc) async for doc in cursor]

    async def replace_offers(self, provider: str, offers: Sequence[Offer], now: datetime) -> None:
        """Refresh one provider's part of the catalog cache."""
        docs = [
            msgspec.to_builtins(offer)
            | {"_id": offer.key, "family": offer.family, "updated_at": now}
            for offer in offers
        ]
        await self._db[OFFERS].delete_many(
            {"provider": provider, "_id": {"$nin": [d["_id"] for d in docs]}}
        )
        for doc in docs:
            await self._db[OFFERS].replace_one({"_id": doc["_id"]}, doc, upsert=True)
