"""Bounds every JSON request body meets before anything decodes it (issue 13).

msgspec turns nesting past the interpreter's recursion limit into RecursionError and bytes
that are not UTF-8 into UnicodeDecodeError; Litestar reports neither as a client error, so
each was a 500. Run as the app's `before_request`, after the guards and before the body is
decoded into the route's Struct; the body is read once (Litestar caches it) within the
route's body size limit.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from neobatch.common.errors import InvalidInput
from neobatch.common.jsonbounds import MAX_JSON_DEPTH, is_utf8, too_deep

# Bodies that are not JSON: the upload's multipart form has its own checks (files/uploads.py).
_NOT_JSON = ("multipart/", "application/x-www-form-urlencoded")


async def check_json_body(request: Request[Any, Any, Any]) -> None:
    if request.method in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return
    if request.content_type[0].startswith(_NOT_JSON):
        return
    body = await request.body()
    if not body:
        return
    if not is_utf8(body):
        raise InvalidInput("request body is not valid JSON: it is not UTF-8", code="invalid_json")
    if too_deep(body):
        raise InvalidInput(
            f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="json_too_deep"
        )
