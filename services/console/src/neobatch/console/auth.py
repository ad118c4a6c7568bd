"""Bearer-key authentication for /api/* and the caller identity derived from the key.

The key itself is never stored or echoed: documents and responses carry only `owner`, a
short digest of the key that stays the same for the same key.
"""

from __future__ import annotations

import hashlib
import hmac

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from neobatch.console.settings import ConsoleSettings

# With auth disabled there is no key to tell callers apart, so they share one owner.
ANONYMOUS_OWNER = "anonymous"


def owner_for_key(api_key: str) -> str:
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:8]


def authenticate(authorization: str | None, api_key: str) -> str:
    """Return the caller's owner id, or raise NotAuthorizedException (401)."""
    if not api_key:
        return ANONYMOUS_OWNER
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise NotAuthorizedException(
            "missing or malformed Authorization header; expected 'Bearer <API key>'"
        )
    # Constant-time comparison: response timing must not reveal a matching key prefix.
    if not hmac.compare_digest(presented.strip().encode(), api_key.encode()):
        raise NotAuthorizedException("invalid API key")
    return owner_for_key(api_key)


def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Litestar guard; it runs before the body is read, so a rejected upload costs nothing."""
    settings: ConsoleSettings = connection.app.state.settings
    authenticate(connection.headers.get("authorization"), settings.api_key)
