"""API keys: bearer authentication, the caller's project, and the per-key request limit.

Keys are stored only as their SHA-256 (`api_keys` collection); a presented key is hashed and
looked up, so neither the key nor its hash is ever compared, logged or returned. Every key
belongs to a project, and every file, job and batch is scoped to the project of the key
that created it.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from datetime import datetime
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from neobatch.console.errors import RateLimited
from neobatch.console.keys.ratelimit import RateLimiter
from neobatch.console.keys.store import KeyStore

# `nb_` so the log redaction (common.logs) recognises a leaked key.
KEY_PREFIX = "nb_"
# The dev key's fixed id, so re-seeding it at every start updates one document.
DEV_KEY_ID = "key_dev"


class Caller(msgspec.Struct, frozen=True):
    key_id: str
    project: str

    @property
    def owner(self) -> str:
        """What `created_by` and file owners hold: the key's id, never the key."""
        return self.key_id


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_doc(key_id: str, api_key: str, project: str, name: str, now: datetime) -> dict[str, Any]:
    return {
        "_id": key_id,
        "hash": hash_key(api_key),
        "project": project,
        "name": name,
        "created_at": now,
        "revoked_at": None,
    }


def bearer_token(authorization: str | None) -> str:
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise NotAuthorizedException(
            "missing or malformed Authorization header; expected 'Bearer <API key>'"
        )
    return presented.strip()


async def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
    """Litestar guard; it runs before the body is read, so a rejected upload costs nothing.

    The caller it finds is kept in the request's state for the `caller` dependency.
    """
    presented = bearer_token(connection.headers.get("authorization"))
    keys: KeyStore = connection.app.state.key_store
    doc = await keys.find_live_key(hash_key(presented))
    if doc is None:
        raise NotAuthorizedException("invalid or revoked API key")
    connection.state.caller = Caller(key_id=doc["_id"], project=doc["project"])


def rate_limited(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard on every API route, after `require_api_key`: past the per-key limit the answer
    is 429 `rate_limited` with Retry-After."""
    caller: Caller = connection.state.caller
    limiter: RateLimiter = connection.app.state.limiter
    wait = limiter.allow(caller.key_id, time.monotonic())
    if wait > 0:
        raise RateLimited(
            f"too many requests for this API key; retry in {math.ceil(wait)} s",
            retry_after=math.ceil(wait),
        )
