"""Compare-and-set writes: a transition applies only if the document is still as expected.

A replayed or out-of-order event finds the document already moved on, matches nothing and
is acknowledged without effect (DESIGN rule 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection

from neobatch.common.contracts import Event
from neobatch.common.mongo import transact
from neobatch.common.outbox import append_events
from neobatch.common.subjects import Namespace


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


async def compare_and_set_with_events(
    client: AsyncMongoClient[dict[str, Any]],
    collection: AsyncCollection[dict[str, Any]],
    doc_id: str,
    expected: Mapping[str, Any],
    update: Mapping[str, Any],
    *,
    events: Sequence[Event],
    ns: Namespace,
    now: datetime,
) -> bool:
    """`compare_and_set` and the events it causes, in one transaction (DESIGN rule 1).

    The events are recorded in the outbox only if the transition won; the caller notifies
    its relay after a win.
    """

    async def work(session: AsyncClientSession) -> bool:
        won = await compare_and_set(collection, doc_id, expected, update, session=session)
        if won:
            await append_events(collection.database, ns, events, session, now)
        return won

    return await transact(client, work)
