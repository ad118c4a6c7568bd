"""The chunk half of `MachineStore` (`machine_store`): the `batch_chunks` documents of a batch
spread over several machines, claimed, reserved slice by slice, stolen, finished, freed.

A mixin only so the store stays one object for its callers and each module stays small: it
uses the store's collections and transaction helper (`_chunks`, `_machines`, `_tx`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import BulkWriteError, DuplicateKeyError

from neobatch.runtime_agent.batch.chunks import pick_victim, steal_split
from neobatch.runtime_agent.batch.machines import READY

Document = dict[str, Any]
# Freeing chunks: nobody holds them; whoever claims one re-runs it from its first line,
# skipping the lines that have results (dirty).
FREE = {"$set": {"machine": None, "token": None, "dirty": True}, "$inc": {"version": 1}}


class Fenced(Exception):
    """A write found its chunk or machine no longer held by the writing run."""

    def __init__(self, chunk_id: str | None) -> None:
        super().__init__(chunk_id or "machine")
        self.chunk_id = chunk_id


class ChunkOps:
    _chunks: Any
    _machines: Any
    _tx: Callable[..., Any]

    async def has_chunks(self, batch_id: str) -> bool:
        return await self._chunks.find_one({"batch_id": batch_id}, {"_id": 1}) is not None

    async def has_open(self, batch_id: str) -> bool:
        """Some chunk of the batch is not finished (held or not)."""
        found = await self._chunks.find_one({"batch_id": batch_id, "status": "open"}, {"_id": 1})
        return found is not None

    async def has_unclaimed(self, batch_id: str) -> bool:
        found = await self._chunks.find_one(
            {"batch_id": batch_id, "status": "open", "machine": None}, {"_id": 1}
        )
        return found is not None

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
        await self._many(
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
        return await self._many(
            {"batch_id": batch_id, "status": "open", "machine": {"$nin": [None, *active]}}, FREE
        )

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
        await self._many(
            {"batch_id": batch_id, "status": "open"},
            {"$set": {"token": None, "machine": None, "status": "ended"}, "$inc": {"version": 1}},
        )

    async def _many(self, query: Document, update: Document) -> int:
        """`update_many` on chunks, in a transaction: chunks are also written by the
        `store_fenced` transactions of running machines, and a multi-document write outside a
        transaction that meets one of them waits on the server (the test server, secantus,
        retries it while holding the collection's lock, which the open transaction's next
        statement needs: every write then hangs). In a transaction the conflict comes back
        at once as a transient error and `with_transaction` retries it here, holding nothing."""

        async def work(session: AsyncClientSession) -> int:
            result = await self._chunks.update_many(query, update, session=session)
            return result.modified_count

        return int(await self._tx(work, events=False))
