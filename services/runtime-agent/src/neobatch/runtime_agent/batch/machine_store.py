"""MachineStore: the MongoDB access of a batch spread over several machines (issue 15).

`batch_machines`: one document per machine of a batch (`machines.Machine`), leased by the
machine run that owns its engine. `batch_chunks`: the batch's ranges of input lines
(`chunks`), each held by at most one machine run at a time, fenced by that run's token:

    {_id: "<batch_id>:<n:06d>" (a stolen tail: "<victim id>.<k>"), batch_id, first, end, cursor,
     machine (machine id or null), token (the holding run's, or null), status: open | done,
     dirty (true: lines before `cursor` may hold results, skip them), stored}

Every change is a compare-and-set; a result is stored only in the transaction that finds its
chunk still held under the writing run's token and the machine still leased to that run, so
a run whose chunk was freed (machine removed, batch ended) or taken over can record nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import BulkWriteError, DuplicateKeyError

from neobatch.common import leases
from neobatch.common.clock import Clock
from neobatch.common.contracts import Event
from neobatch.common.mongo import ensure_indexes, transact, update_many_in_transaction
from neobatch.common.outbox import append_events
from neobatch.common.subjects import Namespace
from neobatch.runtime_agent.batch.chunk_store import FREE, ChunkOps, Fenced
from neobatch.runtime_agent.batch.machines import (
    ACTIVE,
    BATCH_ENDED,
    DONE,
    READY,
    WAITING,
    Machine,
    machine_done,
    machine_from_doc,
)

MACHINES = "batch_machines"
CHUNKS = "batch_chunks"
MACHINE_INDEXES = [
    IndexModel([("status", ASCENDING), ("lease_until", ASCENDING)], name="claimable"),
    IndexModel([("batch_id", ASCENDING)], name="batch"),
]
CHUNK_INDEXES = [
    IndexModel([("batch_id", ASCENDING), ("status", ASCENDING)], name="batch_status"),
    IndexModel([("machine", ASCENDING)], name="machine"),
]
Document = dict[str, Any]


class MachineStore(ChunkOps):
    def __init__(
        self, db: Any, mongo: Any, ns: Namespace, clock: Clock, notify: Callable[[], None]
    ) -> None:
        self._db = db
        self._mongo = mongo
        self._ns = ns
        self._clock = clock
        self._notify = notify
        self._machines = db[MACHINES]
        self._chunks = db[CHUNKS]

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self._machines, MACHINE_INDEXES)
        await ensure_indexes(self._chunks, CHUNK_INDEXES)

    async def _tx(self, work: Callable[[AsyncClientSession], Any], events: bool = True) -> Any:
        result = await transact(self._mongo, work)
        if events:
            self._notify()
        return result

    # --- machines ------------------------------------------------------------------------

    async def insert_machine(
        self, doc: Document, session: AsyncClientSession | None = None
    ) -> None:
        await self._machines.insert_one(doc, session=session)

    async def add_machine(self, doc: Document, events: Sequence[Event] = ()) -> bool:
        """Insert a machine (with its events); False when it is there already."""

        async def work(session: AsyncClientSession) -> None:
            await self._machines.insert_one(doc, session=session)
            if events:
                await append_events(self._db, self._ns, events, session, self._clock.now())

        try:
            await self._tx(work, bool(events))
        except DuplicateKeyError:
            return False
        return True

    async def add_machine_done_again(self, machine: Machine) -> None:
        """`batch.machine_done` (`batch_ended`) once more for a machine already ended."""

        async def work(session: AsyncClientSession) -> None:
            event = machine_done(machine, BATCH_ENDED)
            await append_events(self._db, self._ns, [event], session, self._clock.now())

        await self._tx(work)

    async def find_machine(self, mid: str) -> Machine | None:
        doc = await self._machines.find_one({"_id": mid})
        return machine_from_doc(doc) if doc else None

    async def list_machines(self, batch_id: str) -> list[Machine]:
        cursor = self._machines.find({"batch_id": batch_id}, sort=[("created_at", ASCENDING)])
        return [machine_from_doc(doc) async for doc in cursor]

    async def promote(self, batch_id: str) -> bool:
        """The batch runs: its waiting machines may be claimed; whether there were any."""
        result = await update_many_in_transaction(
            self._machines,
            {"batch_id": batch_id, "status": WAITING},
            {"$set": {"status": READY}, "$inc": {"version": 1}},
        )
        return result.modified_count > 0

    async def claim_machine(self, owner: str, ttl_seconds: float) -> Machine | None:
        doc = await leases.claim_one(
            self._machines,
            {"status": READY},
            owner,
            self._clock.now(),
            ttl_seconds,
            sort=[("created_at", ASCENDING)],
        )
        return machine_from_doc(doc) if doc else None

    async def renew_machine(self, mid: str, owner: str, ttl_seconds: float) -> bool:
        return await leases.renew(self._machines, mid, owner, self._clock.now(), ttl_seconds)

    async def release_machine(self, mid: str, owner: str) -> None:
        await leases.release(self._machines, mid, owner)

    async def hold_back(self, mid: str, owner: str, seconds: float) -> None:
        """Let the lease go, dated `seconds` ahead (a crashed run is not retried at once)."""
        until = self._clock.now() + timedelta(seconds=seconds)
        await leases.release(self._machines, mid, owner, until=until)

    async def note_machine(self, mid: str, owner: str, fields: Document) -> None:
        """Record `fields` (dispatch times, an engine error) on a machine we hold."""
        await self._machines.update_one({"_id": mid, "lease_owner": owner}, {"$set": fields})

    async def pin_machine_key(self, mid: str, key_line: str) -> str | None:
        await self._machines.update_one(
            {"_id": mid, "host_public_key": None}, {"$set": {"host_public_key": key_line}}
        )
        doc = await self._machines.find_one({"_id": mid}, {"host_public_key": 1})
        return doc.get("host_public_key") if doc else None

    async def end_machine(
        self,
        mid: str,
        reason: str,
        *,
        owner: str | None = None,
        status: str = DONE,
        fields: Document | None = None,
    ) -> bool:
        """An active machine becomes `status` (done: with its `batch.machine_done`), its chunks
        freed, in one transaction; False when it was not active (or not ours, given `owner`)."""
        expected: Document = {"_id": mid, "status": {"$in": list(ACTIVE)}}
        if owner is not None:
            expected["lease_owner"] = owner

        async def work(session: AsyncClientSession) -> bool:
            doc = await self._machines.find_one(expected, session=session)
            if doc is None:
                return False
            # The lease stays: the run holding it sees the machine ended (not a lost lease)
            # and stops its engine; an ended machine is never claimed again.
            values = {"status": status, "reason": reason}
            result = await self._machines.update_one(
                {**expected, "version": doc.get("version", 0)},
                {"$set": {**values, **(fields or {})}, "$inc": {"version": 1}},
                session=session,
            )
            if result.modified_count != 1:
                return False
            await self._chunks.update_many(
                {"machine": mid, "status": "open"}, FREE, session=session
            )
            if status == DONE:
                event = machine_done(machine_from_doc(doc), reason)
                await append_events(self._db, self._ns, [event], session, self._clock.now())
            return True

        return bool(await self._tx(work))

    async def store_fenced(
        self,
        mid: str,
        owner: str,
        chunks: dict[str, tuple[str, int]],
        pages: list[Document],
        completed: int,
        failed: int,
        results: Any,
    ) -> None:
        """Insert `pages` only while the machine is leased to `owner` and every chunk in
        `chunks` (id -> (token, lines)) is still held under its token; raises Fenced naming
        the first chunk that is not (None: the machine itself)."""

        async def work(session: AsyncClientSession) -> None:
            won = await self._machines.update_one(
                {"_id": mid, "lease_owner": owner, "status": READY},
                {"$inc": {"lines_completed": completed, "lines_failed": failed}},
                session=session,
            )
            if won.matched_count != 1:
                raise Fenced(None)
            for chunk_id, (token, lines) in chunks.items():
                held = await self._chunks.update_one(
                    {"_id": chunk_id, "token": token},
                    {"$inc": {"stored": lines}},
                    session=session,
                )
                if held.matched_count != 1:
                    raise Fenced(chunk_id)
            await results.insert_many(pages, ordered=True, session=session)

        try:
            await transact(self._mongo, work)
        except DuplicateKeyError:
            return  # an earlier attempt of this very write committed (ids are fixed per write)
        except BulkWriteError as exc:
            if not all(e.get("code") == 11000 for e in exc.details.get("writeErrors", [])):
                raise
