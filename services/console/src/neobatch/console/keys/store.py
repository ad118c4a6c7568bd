"""KeyStore: API keys (`api_keys`), stored only as their SHA-256 (see auth.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.mongo import ensure_indexes
from neobatch.console.page_store import find_page

Document = dict[str, Any]

API_KEYS = "api_keys"
INDEXES = [
    IndexModel([("hash", ASCENDING)], name="hash", unique=True),
    # The key list's pages (`list_key_page`), newest first.
    IndexModel([("created_at", DESCENDING), ("_id", DESCENDING)], name="newest_first"),
]


class KeyStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self._db[API_KEYS], INDEXES)

    async def find_live_key(self, key_hash: str) -> Document | None:
        """The key (not revoked) with this hash."""
        return await self._db[API_KEYS].find_one({"hash": key_hash, "revoked_at": None})

    async def find_key(self, key_id: str) -> Document | None:
        """The key with this id, revoked or not, without its hash."""
        return await self._db[API_KEYS].find_one({"_id": key_id}, {"hash": 0})

    async def list_key_page(
        self, limit: int, after: str | None = None
    ) -> tuple[list[Document], bool]:
        """A page of keys (every project's), newest first, after the key `after`, without
        their hashes; and whether more follow. One query (plus one to find `after`)."""
        cursor = {"_id": after} if after else None
        return await find_page(
            self._db[API_KEYS], {}, after=cursor, limit=limit, projection={"hash": 0}
        )

    async def list_keys(self) -> list[Document]:
        """Every key, oldest first, without its hash (the local admin CLI's listing)."""
        cursor = self._db[API_KEYS].find({}, {"hash": 0}).sort([("created_at", ASCENDING)])
        return await cursor.to_list(None)

    async def list_key_ids(self, project: str) -> list[str]:
        """The ids of every key `project` has had (revoked ones too: their files stay theirs)."""
        docs = await self._db[API_KEYS].find({"project": project}, {"_id": 1}).to_list(None)
        return [doc["_id"] for doc in docs]

    async def insert_key(self, doc: Document) -> None:
        """A new key. An insert, not a compare-and-set: its id and secret are new."""
        await self._db[API_KEYS].insert_one(doc)

    async def seed_key(self, doc: Document) -> None:
        """Create or re-point the key with this id (the dev key), keeping a revocation."""
        fixed = {k: doc[k] for k in ("hash", "project", "role", "name")}
        await self._db[API_KEYS].update_one(
            {"_id": doc["_id"]},
            {"$set": fixed, "$setOnInsert": {"created_at": doc["created_at"], "revoked_at": None}},
            upsert=True,
        )

    async def save_revocation(self, key_id: str, now: datetime) -> bool:
        """Revoke a live key; False if there is none with this id (already revoked or unknown)."""
        result = await self._db[API_KEYS].update_one(
            {"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": now}}
        )
        return result.modified_count == 1
