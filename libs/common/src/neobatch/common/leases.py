"""Leases on documents: long work is owned by one worker at a time and survives its death.

A lease is `{lease_owner, lease_until}` on the document. A worker claims a document whose
lease is absent or expired, renews it while working, and anyone may take it over once it
expires (DESIGN rule 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

Document = dict[str, Any]


def _free(now: datetime) -> dict[str, Any]:
    return {"$or": [{"lease_until": None}, {"lease_until": {"$lt": now}}]}


async def claim_one(
    collection: AsyncCollection[Document],
    match: Mapping[str, Any],
    owner: str,
    now: datetime,
    ttl_seconds: float,
    sort: list[tuple[str, int]] | None = None,
) -> Document | None:
    """Claim one unleased (or expired) document matching `match`; None when there is none."""
    return await collection.find_one_and_update(
        {**match, **_free(now)},
        {"$set": {"lease_owner": owner, "lease_until": now + timedelta(seconds=ttl_seconds)}},
        sort=sort,
        return_document=ReturnDocument.AFTER,
    )


async def renew(
    collection: AsyncCollection[Document],
    doc_id: str,
    owner: str,
    now: datetime,
    ttl_seconds: float,
) -> bool:
    """Extend our lease; False means we lost it and must stop working on the document."""
    result = await collection.update_one(
        {"_id": doc_id, "lease_owner": owner},
        {"$set": {"lease_until": now + timedelta(seconds=ttl_seconds)}},
    )
    return result.matched_count == 1


async def release(collection: AsyncCollection[Document], doc_id: str, owner: str) -> None:
    await collection.update_one(
        {"_id": doc_id, "lease_owner": owner},
        {"$set": {"lease_owner": None, "lease_until": None}},
    )
