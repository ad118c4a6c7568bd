"""BatchStore: the runtime-agent's only MongoDB access. Accept, lease, transition, and what a
run reads and writes besides (its input file, its checkpoints, its result files).

Every status change is a compare-and-set on (status, lease owner) with its outbox events
appended in the same transaction (DESIGN rule 1); an agent that lost its lease matches nothing
and so can never move a batch another agent now owns. The page format of `batch_results` is
`results.pages`; this store hands a run those modules bound to its collections, never the
collections themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from neobatch.common import filestore, leases
from neobatch.common.clock import Clock
from neobatch.common.contracts import TERMINAL_BATCH_STATUSES, BatchStatus, Event
from neobatch.common.mongo import ensure_indexes, transact
from neobatch.common.outbox import append_events
from neobatch.common.runtime import ServiceRuntime
from neobatch.common.subjects import Namespace
from neobatch.common.transitions import compare_and_set_with_events
from neobatch.runtime_agent.batch.batches import (
    TIMESTAMP_FIELD,
    Batch,
    ResultFiles,
    Transition,
    batch_from_doc,
    can_transition,
)
from neobatch.runtime_agent.batch.machine_store import MachineStore
from neobatch.runtime_agent.results import output_files, reading
from neobatch.runtime_agent.results.pages import (
    RESULT_INDEXES,
    RESULTS,
    upgrade_legacy_results,
)
from neobatch.runtime_agent.results.writer import MAX_PENDING_BYTES, CheckpointWriter, Insert

BATCHES = "batches"
BATCH_INDEXES = [
    # The claim query: non-terminal batches whose lease is free or expired.
    IndexModel([("status", ASCENDING), ("lease_until", ASCENDING)], name="claimable"),
    IndexModel([("job_id", ASCENDING)], name="job"),
]
_TERMINAL = [s.value for s in TERMINAL_BATCH_STATUSES]
Document = dict[str, Any]


class BatchStore:
    def __init__(
        self,
        db: AsyncDatabase[Document],
        mongo: Any,
        ns: Namespace,
        clock: Clock,
        notify_outbox: Callable[[], None],
        *,
        checkpoint_max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self._db = db
        self._checkpoint_max_pending_bytes = checkpoint_max_pending_bytes
        self._mongo = mongo
        self._ns = ns
        self._clock = clock
        self._notify = notify_outbox
        self._batches: AsyncCollection[Document] = db[BATCHES]
        self._results: AsyncCollection[Document] = db[RESULTS]
        # The machines and chunks of batches spread over several machines.
        self.machines = MachineStore(db, mongo, ns, clock, notify_outbox)

    @classmethod
    def from_runtime(
        cls, runtime: ServiceRuntime, *, checkpoint_max_pending_bytes: int = MAX_PENDING_BYTES
    ) -> BatchStore:
        return cls(
            runtime.db,
            runtime.mongo,
            runtime.ns,
            runtime.clock,
            runtime.notify_outbox,
            checkpoint_max_pending_bytes=checkpoint_max_pending_bytes,
        )

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self._batches, BATCH_INDEXES)
        await ensure_indexes(self._results, RESULT_INDEXES)
        await self.machines.ensure_indexes()
        await upgrade_legacy_results(self._results, self._clock.now())

    # --- accepting -----------------------------------------------------------------------

    async def insert_batch(
        self, doc: Document, accepted: Event, machine: Document | None = None
    ) -> bool:
        """Insert a new batch with its `accepted` event (and its first machine, when spread);
        False when it already exists."""

        async def work(session: AsyncClientSession) -> None:
            await self._batches.insert_one(doc, session=session)
            if machine is not None:
                await self.machines.insert_machine(machine, session)
            await append_events(self._db, self._ns, [accepted], session, self._clock.now())

        try:
            await transact(self._mongo, work)
        except DuplicateKeyError:
            return False
        self._notify()
        return True

    async def request_cancel(self, batch_id: str, now: datetime, reason: str = "") -> bool:
        """Record a cancel request (and why: "" or `budget_exceeded`) on a live batch; False if
        unknown, terminal or already asked."""
        result = await self._batches.update_one(
            {"_id": batch_id, "status": {"$nin": _TERMINAL}, "cancel_requested_at": None},
            {"$set": {"cancel_requested_at": now, "cancel_reason": reason}, "$inc": {"version": 1}},
        )
        return result.matched_count == 1

    async def find_cancel_reason(self, batch_id: str) -> str:
        doc = await self._batches.find_one({"_id": batch_id}, {"cancel_reason": 1})
        return str((doc or {}).get("cancel_reason") or "")

    async def find_batch(self, batch_id: str) -> Batch | None:
        doc = await self._batches.find_one({"_id": batch_id})
        return batch_from_doc(doc) if doc else None

    # --- leases --------------------------------------------------------------------------

    async def claim_batch(self, owner: str, ttl_seconds: float) -> Batch | None:
        """Take one live batch nobody holds (new, or left by a dead agent), oldest first."""
        doc = await leases.claim_one(
            self._batches,
            {"status": {"$nin": _TERMINAL}},
            owner,
            self._clock.now(),
            ttl_seconds,
            sort=[("created_at", ASCENDING)],
        )
        return batch_from_doc(doc) if doc else None

    async def renew_lease(self, batch_id: str, owner: str, ttl_seconds: float) -> bool:
        return await leases.renew(self._batches, batch_id, owner, self._clock.now(), ttl_seconds)

    async def release_lease(self, batch_id: str, owner: str) -> None:
        await leases.release(self._batches, batch_id, owner)

    async def record_crash(self, batch_id: str, owner: str, retry_in_seconds: float) -> None:
        """Count a run that died of an unexpected error and hold the batch back a while.

        The lease is set free but dated in the future, so no agent (this one included)
        retries at once in a tight loop.
        """
        until = self._clock.now() + timedelta(seconds=retry_in_seconds)
        await self._batches.update_one(
            {"_id": batch_id, "lease_owner": owner},
            {"$inc": {"crash_count": 1}, "$set": {"lease_owner": None, "lease_until": until}},
        )

    async def hold_back(self, batch_id: str, owner: str, seconds: float) -> None:
        """Let the lease go, dated `seconds` ahead, without counting a crash."""
        until = self._clock.now() + timedelta(seconds=seconds)
        await leases.release(self._batches, batch_id, owner, until=until)

    async def retarget(self, event_doc: Document) -> bool:
        """Point a live batch at the machine that replaced a lost one; False if nothing changed.

        The lease is revoked with it: a run still trying the lost machine loses its lease (at
        once when its own agent claims the batch again, else at its next renewal) and stops;
        whichever agent claims the batch next resumes it on the new machine from checkpoints.
        """
        result = await self._batches.update_one(
            {
                "_id": event_doc["_id"],
                "status": {"$nin": _TERMINAL},
                "provision_id": {"$ne": event_doc["provision_id"]},
            },
            {
                "$set": {
                    "provision_id": event_doc["provision_id"],
                    "target": event_doc["target"],
                    # A replacement may come from another provider (failover): another launch.
                    "runtime": event_doc.get("runtime", "ssh"),
                    "host_public_key": event_doc.get("host_public_key"),
                    "crash_count": 0,
                    "lease_owner": None,
                    "lease_until": None,
                },
                "$inc": {"version": 1},
            },
        )
        return result.modified_count == 1

    async def cancel_requested(self, batch_id: str) -> bool:
        doc = await self._batches.find_one({"_id": batch_id}, {"cancel_requested_at": 1})
        return bool(doc and doc.get("cancel_requested_at"))

    async def pin_host_key(self, batch_id: str, owner: str, key_line: str) -> str | None:
        """Pin `key_line` unless a key is pinned already; returns the key pinned now."""
        doc = await self._batches.find_one_and_update(
            {"_id": batch_id, "lease_owner": owner, "host_public_key": None},
            {"$set": {"host_public_key": key_line}},
            projection={"host_public_key": 1},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            doc = await self._batches.find_one({"_id": batch_id}, {"host_public_key": 1})
        return doc.get("host_public_key") if doc else None

    # --- what a run reads and writes besides its document ---------------------------------

    def input_lines(self, file_id: str, max_line_bytes: int | None = None) -> AsyncIterator[bytes]:
        """The lines of an input file, in order (NotFound when it does not exist); a line
        longer than `max_line_bytes` comes cut to one byte more than that."""
        return filestore.iter_lines(self._db, file_id, max_line_bytes)

    async def finished_lines(self, batch_id: str) -> set[int]:
        """Line indexes with a stored result: a resumed run skips them."""
        return await reading.finished_indexes(self._results, batch_id)

    async def count_results(self, batch_id: str) -> tuple[int, int]:
        """(completed, failed) among the stored results, each line counted once."""
        return await reading.count_results(self._results, batch_id)

    def checkpoint_writer(
        self,
        batch_id: str,
        *,
        max_pending: int = 10_000,
        flush_interval_seconds: float = 0.005,
        on_stored: Callable[[int, int], None] | None = None,
        insert: Insert | None = None,
    ) -> CheckpointWriter:
        """A writer storing the batch's results in groups (use it as `async with`)."""
        return CheckpointWriter(
            self._results,
            batch_id,
            self._clock,
            max_pending=max_pending,
            max_pending_bytes=self._checkpoint_max_pending_bytes,
            flush_interval_seconds=flush_interval_seconds,
            on_stored=on_stored,
            insert=insert,
        )

    async def store_fenced(
        self,
        mid: str,
        owner: str,
        chunks: dict[str, tuple[str, int]],
        pages: list[Document],
        completed: int,
        failed: int,
    ) -> None:
        """A machine run's checkpoint write, fenced by its chunk claims (`MachineStore`)."""
        await self.machines.store_fenced(
            mid, owner, chunks, pages, completed, failed, self._results
        )

    async def write_result_files(self, batch: Batch, *, completed: int, failed: int) -> ResultFiles:
        """The batch's output and error files from its checkpoints (rewritten if they exist)."""
        return await output_files.write_result_files(
            self._db,
            self._results,
            batch.id,
            owner=batch.owner,
            completed=completed,
            failed=failed,
        )

    # --- transitions ---------------------------------------------------------------------

    async def _write(
        self,
        batch_id: str,
        expected: Document,
        update: Document,
        events: Sequence[Event],
    ) -> bool:
        won = await compare_and_set_with_events(
            self._mongo,
            self._batches,
            batch_id,
            expected,
            update,
            events=events,
            ns=self._ns,
            now=self._clock.now(),
        )
        if won and events:
            self._notify()
        return won

    async def save_transition(
        self, batch_id: str, owner: str, old: BatchStatus, transition: Transition
    ) -> bool:
        """Write `transition` from `old` if we still hold the lease, its event in the same
        transaction; a terminal status releases the lease. False: the lease was lost."""
        new = transition.status
        if not can_transition(old, new):
            raise ValueError(f"batch cannot go from {old} to {new}")
        now = self._clock.now()
        values: Document = {
            "status": new.value,
            TIMESTAMP_FIELD[new]: now,
            "updated_at": now,
            **_builtins(transition.fields),
        }
        if new.is_terminal:
            # Done for good: nobody should claim it again.
            values.update(lease_owner=None, lease_until=None)
        return await self._write(
            batch_id,
            {"status": old.value, "lease_owner": owner},
            {"$set": values},
            [transition.event],
        )

    async def save_progress(
        self,
        batch_id: str,
        owner: str,
        status: BatchStatus,
        fields: Document,
        events: Sequence[Event] = (),
    ) -> bool:
        """Update counts (and emit progress) without a status change; False = lease lost."""
        values = {**_builtins(fields), "updated_at": self._clock.now()}
        return await self._write(
            batch_id, {"status": status.value, "lease_owner": owner}, {"$set": values}, events
        )


def _builtins(fields: Document) -> Document:
    # Structs (RequestCounts, LineError) become plain documents; datetimes stay BSON dates.
    return {k: msgspec.to_builtins(v, builtin_types=(datetime,)) for k, v in fields.items()}
