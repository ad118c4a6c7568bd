"""Claims that meet an open transaction on the real MongoDB-wire server: a claim must never
freeze a transaction that already wrote one of the documents it matches.

Seen on the many-machines run: an agent's claim of expired machine leases (a multi-document
update outside any transaction) met a `store_fenced` transaction that had just written one of
those machine documents. The server waited on the claim holding the collection's lock, the
transaction's next statement needed that lock, and both hung until the server reaped the
transaction 60 s later: a takeover after an agent's SIGKILL took 48 s.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.leases import claim_many
from neobatch.common.mongo import create_mongo_client, update_many_in_transaction

STATEMENT_DEADLINE_SECONDS = 10


async def test_a_claim_meeting_an_open_transaction_does_not_freeze_it(
    mongo_url: str, mongo_db: AsyncDatabase
) -> None:
    machines = mongo_db["machines"]
    now = datetime.now(UTC)
    expired = now - timedelta(seconds=5)
    await machines.insert_many(
        [
            {"_id": "m1", "status": "ready", "lease_owner": "dead", "lease_until": expired},
            {"_id": "m2", "status": "ready", "lease_owner": "live", "lease_until": expired},
            {"_id": "m3", "status": "done"},
        ]
    )
    client: AsyncMongoClient = create_mongo_client(mongo_url)
    try:
        db = client[mongo_db.name]
        async with client.start_session() as session:
            await session.start_transaction()
            # The lease holder's transaction writes its machine (as `store_fenced` does)...
            await db["machines"].update_one({"_id": "m2"}, {"$inc": {"lines": 1}}, session=session)
            # ...while another agent claims every expired machine, m2 included.
            claim = asyncio.create_task(
                claim_many(
                    mongo_db["machines"],
                    {"status": "ready"},
                    "thief",
                    now,
                    30,
                    sort=[("_id", 1)],
                    limit=10,
                )
            )
            await asyncio.sleep(0.3)  # the claim reaches the server and meets the write
            # The transaction goes on and commits within a statement's time.
            async with asyncio.timeout(STATEMENT_DEADLINE_SECONDS):
                await db["machines"].update_one(
                    {"_id": "m3"}, {"$set": {"seen": True}}, session=session
                )
                await session.commit_transaction()
        async with asyncio.timeout(STATEMENT_DEADLINE_SECONDS):
            claimed = await claim
    finally:
        await client.close()
    # The claim, retried after the commit, took what was still expired.
    assert {doc["_id"] for doc in claimed} <= {"m1", "m2"}
    after = {doc["_id"]: doc async for doc in machines.find({})}
    assert after["m2"]["lines"] == 1 and after["m3"]["seen"] is True


async def test_update_many_in_transaction_changes_every_match(mongo_db: AsyncDatabase) -> None:
    slots = mongo_db["slots"]
    await slots.insert_many([{"_id": i, "active": True} for i in range(5)])
    result = await update_many_in_transaction(
        slots, {"_id": {"$in": [1, 3]}}, {"$set": {"active": False}}
    )
    assert result.modified_count == 2
    inactive = {doc["_id"] async for doc in slots.find({"active": False})}
    assert inactive == {1, 3}
