"""Transactional outbox and its relay (DESIGN rule 1).

A handler writes its state change and the events it causes in one MongoDB transaction
(`append_events`). The relay publishes pending entries with `Nats-Msg-Id` = event id and
marks them sent. If the relay dies between publishing and marking, another relay takes the
entry over once its lease expires and re-publishes it; JetStream recognises the id inside
the duplicate window and stores it once.

Fast path: entries appended inside `mongo.transact` while this process's relay runs are
written already leased to that relay, and handed to it once the transaction commits; it
publishes them at once and marks them sent, many per round trip, with no claim. Claims are
only for entries nobody handed over: written outside `transact`, or left by a process that
died before publishing them (claimable once their lease expires); the relay sweeps for
those on `notify()` without a hand-over and at least every poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Sequence
from datetime import datetime, timedelta
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
from neobatch.common.mongo import after_commit
from neobatch.common.subjects import Namespace

log = logging.getLogger("neobatch.outbox")

OUTBOX = "outbox"
RELAY_LEASE_SECONDS = 15.0
# Entries claimed and marked per database round trip.
RELAY_BATCH = 64
# Handed-over entries are marked sent together: once this many are waiting, or the oldest
# has waited this long (they stay leased to the relay meanwhile, so nobody re-publishes them).
MARK_BATCH = 256
MARK_DELAY_SECONDS = 0.2
# Handed-over entries held for publishing at most; beyond, a sweep finds them in the outbox.
MAX_HANDED = 10_000
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
    """Record `events` for publishing, inside the caller's transaction.

    Inside `mongo.transact`, the entries go to this process's relay of `db` once the
    transaction commits (the fast path); otherwise a relay sweep finds them.
    """
    if not events:
        return
    entries = [outbox_entry(ns, e, now) for e in events]
    relay = _relay_for(db)
    if relay is not None and after_commit(lambda: relay.hand_over(entries)):
        # Leased to our relay: no other relay's sweep publishes them while it does.
        until = now + timedelta(seconds=RELAY_LEASE_SECONDS)
        for entry in entries:
            entry["lease_owner"] = relay.lease_owner
            entry["lease_until"] = until
    await db[OUTBOX].insert_many(entries, session=session)


# The live relay of each database this process writes to (one per ServiceRuntime), keyed by
# client identity and database name: the fast path hands committed entries to it.
_RELAYS: dict[tuple[int, str], weakref.ref[OutboxRelay]] = {}


def _relay_for(db: AsyncDatabase[dict[str, Any]]) -> OutboxRelay | None:
    ref = _RELAYS.get((id(db.client), db.name))
    relay = ref() if ref is not None else None
    if relay is None or not relay.running or relay._db.client is not db.client:
        return None
    return relay


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
        self._db = db
        self._outbox = db[OUTBOX]
        self._js = nc.jetstream()
        self._clock = clock or SystemClock()
        self._poll = poll_interval_seconds
        self._wakeup = asyncio.Event()
        # Entries this process committed, in commit order, not yet published (fast path).
        self._handed: list[dict[str, Any]] = []
        # Hand-overs not yet matched by a notify(): a notify they cover needs no sweep.
        self._unmatched_handovers = 0
        self._sweep_wanted = True
        self._last_sweep = float("-inf")
        # Published handed-over entries whose `published_at` is not written yet.
        self._unmarked: list[str] = []
        self._unmarked_since = 0.0
        self.lease_owner = new_id("relay")
        self.running = False
        _RELAYS[(id(db.client), db.name)] = weakref.ref(self)

    def notify(self) -> None:
        """Called after a transaction that appended events commits: publish without waiting."""
        if self._unmatched_handovers > 0:
            self._unmatched_handovers -= 1  # its entries were handed over: no sweep needed
        else:
            self._sweep_wanted = True
        self._wakeup.set()

    def hand_over(self, entries: Sequence[dict[str, Any]]) -> None:
        """Entries of a transaction that just committed: publish them without claiming."""
        if len(self._handed) >= MAX_HANDED:
            self._sweep_wanted = True  # a relay that is not running: the sweep has them all
        else:
            self._handed.extend(entries)
        self._unmatched_handovers += 1
        self._wakeup.set()

    async def publish_handed(self, *, mark: bool = True) -> int:
        """Publish the handed-over entries in commit order, then mark them sent.

        Entries handed over while publishing are published in the same call, and marked
        many per round trip: with `mark=False` only once MARK_BATCH wait (the run loop
        marks the rest within MARK_DELAY_SECONDS). On a failure the unpublished entries
        stay queued for the next pass.
        """
        published = 0
        while self._handed:
            entries, self._handed = self._handed, []
            for n, entry in enumerate(entries):
                try:
                    await self._js.publish(
                        entry["subject"], entry["payload"], headers={"Nats-Msg-Id": entry["_id"]}
                    )
                except BaseException:
                    self._handed[:0] = entries[n:]
                    raise
                if not self._unmarked:
                    self._unmarked_since = time.monotonic()
                self._unmarked.append(entry["_id"])
            published += len(entries)
            if len(self._unmarked) >= MARK_BATCH:
                await self._mark_sent()
        if mark:
            await self._mark_sent()
        return published

    async def _mark_sent(self) -> None:
        if not self._unmarked:
            return
        ids = list(self._unmarked)
        sent_at = self._clock.now()
        await self._outbox.update_many(
            {"_id": {"$in": ids}, "published_at": None},
            {"$set": {"published_at": sent_at, "sent_at": sent_at}},
        )
        del self._unmarked[: len(ids)]

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
            if len(entries) < RELAY_BATCH:
                return published

    async def run(self) -> None:
        """Publish forever; a failure (nats or mongo away) is logged and retried."""
        backoff = self._poll
        self.running = True
        try:
            await self._run(backoff)
        finally:
            self.running = False
            # Best effort: what stays unmarked is re-published (once its lease expires) and
            # recognised by JetStream as a duplicate.
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._mark_sent(), 1.0)

    async def _run(self, backoff: float) -> None:
        while True:
            # Clear before the pass: a notify() during the pass makes the wait return at once.
            self._wakeup.clear()
            wait = backoff
            try:
                await self.publish_handed(mark=False)
                if self._unmarked:
                    wait = self._unmarked_since + MARK_DELAY_SECONDS - time.monotonic()
                    if wait <= 0:
                        await self._mark_sent()
                        wait = backoff
                if self._sweep_wanted or time.monotonic() - self._last_sweep >= self._poll:
                    self._sweep_wanted = False
                    self._last_sweep = time.monotonic()
                    await self.publish_pending()
                backoff = self._poll
                wait = min(wait, backoff)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "outbox relay pass failed",
                    exc_info=True,
                    extra=log_fields(retry_in_seconds=backoff),
                )
                backoff = wait = min(backoff * 2, 10.0)
            with contextlib.suppress(TimeoutError):
                await wait_for_event(self._wakeup, wait)
