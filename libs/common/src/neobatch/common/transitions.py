"""Compare-and-set writes: a transition applies only if the document is still as expected.

A replayed or out-of-order event finds the document already moved on, matches nothing and
is acknowledged without effect (DESIGN rule 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection


async def compare_and_set(
    collection: AsyncCollection[dict[str, Any]],
    doc_id: str,
    expected: Mapping[str, Any],
    update: Mapping[str, Any],
    *,
    session: AsyncClientSession | None = None,
) -> bool:
    """Apply `update` to `doc_id` if its fields still equal `expected`; return whether it won.

    `expected` values may be query operators (e.g. `{"status": {"$in": [...]}}`). Every
    winning write also bumps `version`, so concurrent writers of the same state conflict.
    """
    update = dict(update)
    update.setdefault("$inc", {})
    update["$inc"] = {**update["$inc"], "version": 1}
    result = await collection.update_one({"_id": doc_id, **expected}, update, session=session)
    return result.matched_count == 1
