"""Transactional outbox and its relay (DESIGN rule 1).

A handler writes its state change and the events it causes in one MongoDB transaction
(`append_events`). The relay publishes pending entries with `Nats-Msg-Id` = event id and
marks them sent. If the relay dies between publishing and marking, another relay takes the
entry over once its lease expires and re-publishes it; JetStream recognises the id inside
the duplicate window and stores it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import nats
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.aio import wait_for_event
from neobatch.common.clock import Clock, SystemClock
from neobatch.common.contracts import Event, encode_event
from neobatch.common.ids import new_id
from neobatch.common.leases import claim_many
from neobatch.common.logs import log_fields
from neobatch.common.subjects import Namespace

log = logging.getLogger("neobatch.outbox")

OUTBOX = "outbox"
RELAY_LEASE_SECONDS = 15.0
# Entries claimed and marked per database round trip.
RELAY_BATCH = 64
# Sent entries are kept a day for inspection, then expire (TTL index).
SENT_RETENTION_SECONDS = 24 * 3600
OUTBOX_INDEXES = [
    IndexModel([("published_at", ASCENDING), ("created_at", ASCENDING)], name="pending"),
    IndexModel(
        [("sent_at", ASCENDING)], name="sent_ttl", expireAfterSeconds=SENT_RETENTION_SECONDS
    ),
]


def outbox_entry(ns: Namespace, event: Event, now: datetime) -> dict[str, Any]:
    return {
        "_id": event.event_id,
        "subject": ns.subject(event),
        "payload": encode_event(event),
        "created_at": now,
        "published_at": None,
        "lease_owner": None,
        "lease_until": None,
    }


async def append_events(
    db: AsyncDatabase[dict[str, Any]],
    ns: Namespace,
    events: Sequence[Event],
    session: AsyncClientSession,
    now: datetime,
) -> None:
    """Record `events` for publishing, inside the caller's transaction."""
    if events:
        await db[OUTBOX].insert_many([outbox_entry(ns, e, now) for e in events], session=session)


class OutboxRelay:
    """Publishes outbox entries. Several relays (one per service instance) may run at once."""

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        nc: nats.NATS,
        *,
        clock: Clock | None = None,
        poll_interval_seconds: float = 0.5,
    ) -> None:
        self._outbox = db[OUTBOX]
        self._js = nc.jetstream()
        self._clock = clock or SystemClock()
        self._poll = poll_interval_seconds
        self._wakeup = asyncio.Event()

    def notify(self) -> None:
        """Called after a transaction that appended events commits: publish without waiting."""
        self._wakeup.set()

    async def publish_pending(self) -> int:
        """Publish every pending entry now, a batch per round trip; returns how many."""
        published = 0
        while True:
            claim = new_id("claim")
            entries = await claim_many(
                self._outbox,
                {"published_at": None},
                claim,
                self._clock.now(),
                RELAY_LEASE_SECONDS,
                sort=[("created_at", ASCENDING)],
                limit=RELAY_BATCH,
            )
            if not entries:
                return published
            for entry in entries:  # in commit order: a consumer sees cause before effect
                await self._js.publish(
                    entry["subject"], entry["payload"], headers={"Nats-Msg-Id": entry["_id"]}
                )
            sent_at = self._clock.now()
            await self._outbox.update_many(
                {"_id": {"$in": [e["_id"] for e in entries]}, "lease_owner": claim},
                {"$set": {"published_at": sent_at, "sent_at": sent_at}},
            )
            published += len(entries)

    async def run(self) -> None:
        """Publish forever; a failure (nats or mongo away) is logged and retried."""
        backoff = self._poll
        while True:
            # Clear before the pass: a notify() during the pass makes the wait return at once.
            self._wakeup.clear()
            try:
                await self.publish_pending()
                backoff = self._poll
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "outbox relay pass failed",
                    exc_info=True,
                    extra=log_fields(retry_in_seconds=backoff),
                )
                backoff = min(backoff * 2, 10.0)
            with contextlib.suppress(TimeoutError):
                await wait_for_event(self._wakeup, backoff)
