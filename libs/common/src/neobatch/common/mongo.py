"""MongoDB client factory and index helpers. Only store modules use the client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.results import DeleteResult, UpdateResult

from neobatch.common.settings import CommonSettings

T = TypeVar("T")
Document = dict[str, Any]

# The after-commit callbacks of the transaction attempt running in this task, if any.
_AFTER_COMMIT: ContextVar[list[Callable[[], None]] | None] = ContextVar(
    "neobatch_after_commit", default=None
)


def create_mongo_client(url: str) -> AsyncMongoClient[Document]:
    # tz_aware: every datetime we read back is UTC-aware, like the ones we write.
    return AsyncMongoClient(url, tz_aware=True, serverSelectionTimeoutMS=10_000)


def get_database(
    client: AsyncMongoClient[Document], settings: CommonSettings
) -> AsyncDatabase[Document]:
    return client.get_database(settings.db_name)


async def ensure_indexes(
    collection: AsyncCollection[Document], indexes: Sequence[IndexModel]
) -> None:
    if indexes:
        await collection.create_indexes(list(indexes))


async def transact(
    client: AsyncMongoClient[Document], work: Callable[[AsyncClientSession], Awaitable[T]]
) -> T:
    """Run `work` in one transaction: a state change and its outbox entries commit together.

    `with_transaction` retries on TransientTransactionError; `work` must not swallow write
    errors (a DuplicateKeyError aborts the transaction — let it escape, library-notes §1).
    """
    callbacks: list[Callable[[], None]] = []

    async def attempt(session: AsyncClientSession) -> T:
        callbacks.clear()  # a retried attempt registers its own again
        token = _AFTER_COMMIT.set(callbacks)
        try:
            return await work(session)
        finally:
            _AFTER_COMMIT.reset(token)

    async with client.start_session() as session:
        result = await session.with_transaction(attempt)
    for callback in callbacks:
        callback()
    return result


async def update_many_in_transaction(
    collection: AsyncCollection[Document], query: Document, update: Document
) -> UpdateResult:
    """`update_many` as its own transaction. Use it for every multi-document update of a
    collection that transactions also write. Outside a transaction, a multi-document write that
    meets a transaction's uncommitted write waits on the server: the test server (secantus)
    waits holding the collection's lock, which that transaction's next statement needs, so
    both hang until the server reaps the transaction (60 s: a takeover stalled 48 s on it).
    Inside one the conflict comes back at once as a transient error, and `transact` retries
    it holding nothing."""

    async def work(session: AsyncClientSession) -> UpdateResult:
        return await collection.update_many(query, update, session=session)

    return await transact(collection.database.client, work)


async def delete_many_in_transaction(
    collection: AsyncCollection[Document], query: Document
) -> DeleteResult:
    """`delete_many` as its own transaction, for the reason `update_many_in_transaction` gives."""

    async def work(session: AsyncClientSession) -> DeleteResult:
        return await collection.delete_many(query, session=session)

    return await transact(collection.database.client, work)


def after_commit(callback: Callable[[], None]) -> bool:
    """Run `callback` once the enclosing `transact` has committed; never if it aborts.

    Returns False (and does nothing) outside `transact`. Callbacks must not raise: the
    transaction is already committed when they run.
    """
    callbacks = _AFTER_COMMIT.get()
    if callbacks is None:
        return False
    callbacks.append(callback)
    return True
