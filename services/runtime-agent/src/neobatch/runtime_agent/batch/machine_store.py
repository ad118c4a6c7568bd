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
from neobatch.common.mongo import ensure_indexes, transact
from neobatch.common.outbox import append_events
from neobatch.common.subjects import Namespace
from neobatch.runtime_agent.batch.chunks import pick_victim, steal_split
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


class Fenced(Exception):
    """A write found its chunk or machine no longer held by the writing run."""

    def __init__(self, chunk_id: str | None) -> None:
        super().__init__(chunk_id or "machine")
        self.chunk_id = chunk_id


# Freeing chunks: nobody holds them; whoever claims one re-runs it from its first line,
# skipping the lines that have results (dirty).
FREE = {"$set": {"machine": None, "token": None, "dirty": True}, "$inc": {"version": 1}}


class MachineStore:
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
        result = await self._machines.update_many(
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
        await self._machines.update_one(
            {"_id": mid, "lease_owner": owner},
            {"$set": {"lease_owner": None, "lease_until": until}},
        )

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

    # --- chunks --------------------------------------------------------------------------

    async def has_chunks(self, batch_id: str) -> bool:
        return await self._chunks.find_one({"batch_id": batch_id}, {"_id": 1}) is not None

    async def insert_chunks(self, batch_id: str, ranges: Sequence[tuple[int, int]]) -> None:
        """The batch's chunks, once (ids are deterministic: a second call adds nothing)."""
        docs = [
            {
                "_id": f"{batch_id}:{n:06d}",
                "batch_id": batch_id,
                "first": first,
                "end": end,
                "cursor": first,
                "machine": None,
                "token": None,
                "status": "open",
                "dirty": False,
                "stored": 0,
                "version": 0,
            }
            for n, (first, end) in enumerate(ranges)
        ]
        for start in range(0, len(docs), 500):
            try:
                await self._chunks.insert_many(docs[start : start + 500], ordered=False)
            except BulkWriteError as exc:  # only duplicates are fine: inserted before
                errors = exc.details.get("writeErrors", [])
                if not all(e.get("code") == 11000 for e in errors):
                    raise

    async def take_back(self, mid: str, token: str) -> None:
        """A new run of a machine: the chunks its earlier run held are ours, re-run from their
        first line (lines with results are skipped)."""
        await self._chunks.update_many(
            {"machine": mid, "status": "open"},
            {"$set": {"token": token, "dirty": True}, "$inc": {"version": 1}},
        )
        async for doc in self._chunks.find({"machine": mid, "status": "open"}, {"first": 1}):
            await self._chunks.update_one(
                {"_id": doc["_id"], "token": token}, {"$set": {"cursor": doc["first"]}}
            )

    async def held_chunks(self, mid: str, token: str) -> list[Document]:
        cursor = self._chunks.find({"machine": mid, "token": token, "status": "open"})
        return await cursor.sort("first", ASCENDING).to_list()

    async def claim_chunk(self, batch_id: str, mid: str, token: str) -> Document | None:
        """The first open chunk nobody holds, now ours (a compare-and-set on its version).

        Not in a transaction with the machine (a transaction costs several times more on a
        busy database): a claim that raced with the end of its machine is given back here when
        the machine is seen ended, and otherwise by the batch run's sweep (`free_orphans`)."""
        cursor = self._chunks.find(
            {"batch_id": batch_id, "status": "open", "machine": None},
            sort=[("first", ASCENDING)],
            limit=8,
        )
        for doc in await cursor.to_list():
            result = await self._chunks.update_one(
                {"_id": doc["_id"], "machine": None, "version": doc["version"]},
                {
                    "$set": {"machine": mid, "token": token, "cursor": doc["first"]},
                    "$inc": {"version": 1},
                },
            )
            if result.modified_count != 1:
                continue
            machine = await self._machines.find_one({"_id": mid}, {"status": 1, "lease_owner": 1})
            if machine is None or machine["status"] != READY or machine["lease_owner"] != token:
                await self._chunks.update_one({"_id": doc["_id"], "token": token}, FREE)
                return None
            return {**doc, "machine": mid, "token": token, "cursor": doc["first"]}
        return None

    async def free_orphans(self, batch_id: str, active: Sequence[str]) -> int:
        """Free the open chunks held by machines that are no longer active."""
        result = await self._chunks.update_many(
            {"batch_id": batch_id, "status": "open", "machine": {"$nin": [None, *active]}}, FREE
        )
        return result.modified_count

    async def _still_running(self, mid: str, token: str, session: AsyncClientSession) -> bool:
        """Inside a claim's transaction: is the machine still ready and run by `token`? Written,
        not only read, so a concurrent end of the machine (which frees its chunks) conflicts
        with the claim instead of missing the chunk it takes."""
        result = await self._machines.update_one(
            {"_id": mid, "status": READY, "lease_owner": token},
            {"$inc": {"claims": 1}},
            session=session,
        )
        return result.matched_count == 1

    async def steal(self, batch_id: str, mid: str, token: str) -> Document | None:
        """The unstarted tail of the open chunk (held by another machine) with the most work
        left, as a new chunk of ours; None when no chunk has enough left."""
        for _ in range(5):
            docs = await self._chunks.find(
                {"batch_id": batch_id, "status": "open", "machine": {"$ne": mid}}
            ).to_list()
            docs = [d for d in docs if d.get("machine") is not None]
            victim_id = pick_victim([(d["_id"], d["cursor"], d["end"]) for d in docs])
            if victim_id is None:
                return None
            victim = next(d for d in docs if d["_id"] == victim_id)
            split = steal_split(victim["cursor"], victim["end"])
            assert split is not None
            stolen = {
                "_id": f"{victim_id}.{victim['version']}",
                "batch_id": batch_id,
                "first": split,
                "end": victim["end"],
                "cursor": split,
                "machine": mid,
                "token": token,
                "status": "open",
                "dirty": bool(victim.get("dirty")),
                "stored": 0,
                "version": 0,
            }

            async def work(
                session: AsyncClientSession, v: Document = victim, s: Document = stolen
            ) -> bool:
                if not await self._still_running(mid, token, session):
                    raise Fenced(None)
                result = await self._chunks.update_one(
                    {"_id": v["_id"], "version": v["version"], "cursor": {"$lte": s["first"]}},
                    {"$set": {"end": s["first"]}, "$inc": {"version": 1}},
                    session=session,
                )
                if result.modified_count != 1:
                    return False
                await self._chunks.insert_one(s, session=session)
                return True

            try:
                if await self._tx(work, events=False):
                    return stolen
            except DuplicateKeyError:
                pass
            except Fenced:
                return None
        return None

    async def reserve(self, chunk: Document, token: str, want: int) -> tuple[int, int] | None:
        """Move the chunk's cursor over up to `want` lines; `(start, stop)` reserved (empty when
        the chunk has no unstarted line), None when the chunk is no longer ours.

        `chunk` is our last view of it (its `cursor` and `end` are updated here): the first
        try is one write on that view; only when a thief moved `end` meanwhile is it read again.
        """
        for _ in range(10):
            start, end = chunk["cursor"], chunk["end"]
            stop = min(end, start + want)
            if stop <= start:
                return start, start
            result = await self._chunks.update_one(
                {
                    "_id": chunk["_id"],
                    "token": token,
                    "status": "open",
                    "cursor": start,
                    "end": end,
                },
                {"$set": {"cursor": stop}},
            )
            if result.modified_count == 1:
                chunk["cursor"] = stop
                return start, stop
            doc = await self._chunks.find_one(
                {"_id": chunk["_id"], "token": token, "status": "open"}
            )
            if doc is None:
                return None
            chunk.update(cursor=doc["cursor"], end=doc["end"])
        return None

    async def finish_chunk(self, chunk_id: str, token: str) -> bool:
        result = await self._chunks.update_one(
            {"_id": chunk_id, "token": token, "status": "open"},
            {"$set": {"status": "done"}, "$inc": {"version": 1}},
        )
        return result.modified_count == 1

    async def revoke_all(self, batch_id: str) -> None:
        """The batch ends: no chunk is held any more, so no late result can be stored."""
        await self._chunks.update_many(
            {"batch_id": batch_id, "status": "open"},
            {"$set": {"token": None, "machine": None, "status": "ended"}, "$inc": {"version": 1}},
        )

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
