"""Every error response is JSON `{code, message}` (DESIGN rule 6).

`code` is a stable snake_case string clients can match on; `message` names the field or
the problem, with anything secret-looking masked.
"""

from __future__ import annotations

import errno
import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import ClientException, HTTPException, SerializationException
from litestar.types import ExceptionHandlersMap

from neobatch.common.errors import Conflict, InvalidInput, NeobatchError, NotFound
from neobatch.common.logs import log_fields, redact_text

log = logging.getLogger("neobatch.console")


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    # Only on `quote_exceeds_max_cost`: the quote that is over the job's cap (jobs/quote.py).
    quote: Any = msgspec.UNSET


class Forbidden(NeobatchError):
    code = "forbidden"


class InvalidFile(InvalidInput):
    code = "invalid_file"


class TooLarge(InvalidInput):
    code = "file_too_large"


class Unprocessable(InvalidInput):
    """Well-formed, but names something that cannot be used that way (HTTP 422)."""

    code = "unprocessable"


class QuoteExceedsCap(Unprocessable):
    """The job's quote is above its `max_cost_usd` (422); the error carries the quote."""

    code = "quote_exceeds_max_cost"

    def __init__(self, message: str, *, quote: Any) -> None:
        super().__init__(message)
        self.quote = quote


class OverBudget(Forbidden):
    """The project spent its monthly budget (403): no new job until an operator raises it."""

    code = "project_over_budget"


class RateLimited(NeobatchError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(RateLimited):
    """A project quota (queued jobs) is used up: 429 with Retry-After, like the rate limit."""

    code = "quota_exceeded"


# Most specific first: TooLarge and Unprocessable are InvalidInput too.
_NEOBATCH_STATUS: tuple[tuple[type[NeobatchError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (Forbidden, 403),
    (TooLarge, 413),
    (Unprocessable, 422),
    (RateLimited, 429),
    (InvalidInput, 400),
)
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    503: "unavailable",
}
# A write that failed because the disk (the upload spool, NEOBATCH_SPOOL_DIR) is full.
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>.*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")


def error_response(status: int, code: str, message: str) -> Response[ErrorBody]:
    return Response(ErrorBody(code=code, message=redact_text(message)), status_code=status)


def _field_path(path: str) -> str:
    """msgspec's `$.data.spec.accelerator.count` → `spec.accelerator.count`."""
    key_of = path.startswith("key` in `")
    if key_of:
        path = path.removeprefix("key` in `")
    for root in ("$.data", "$"):
        if path == root or path.startswith(root + ".") or path.startswith(root + "["):
            path = path[len(root) :].lstrip(".")
            break
    return f"{path} (key)" if key_of and path else path


def describe_validation_error(text: str) -> tuple[str, str]:
    """A msgspec validation message → (code, message naming the field)."""
    match = _AT.match(text)
    msg, path = (match["msg"], match["path"] or "") if match else (text, "")
    field = _field_path(path)
    if missing := _MISSING.match(msg):
        name = missing["field"]
        if name == "data" and not field:
            # Litestar wraps the whole body as `data`: nothing was sent.
            return "invalid_json", "request body is empty; expected a JSON object"
        full = f"{field}.{name}" if field else name
        return "invalid_request", f"{full} is required"
    if field:
        return "invalid_request", f"{field}: {msg}"
    if msg.startswith("Expected"):
        return "invalid_request", f"request body: {msg}"
    return "invalid_request", msg


def _describe_client_error(exc: ClientException) -> tuple[str, str]:
    cause = exc.__cause__
    if isinstance(cause, SerializationException):
        return "invalid_json", f"request body is not valid JSON: {cause}"
    if isinstance(cause, msgspec.ValidationError):
        return describe_validation_error(str(cause))
    extra: Any = exc.extra
    if isinstance(extra, list) and extra:
        parts = [
            f"{item.get('key')}: {item.get('message')}" if isinstance(item, dict) else str(item)
            for item in extra
        ]
        return "invalid_request", "; ".join(parts)
    return "bad_request", str(exc.detail)


def on_neobatch_error(request: Request[Any, Any, Any], exc: NeobatchError) -> Response[ErrorBody]:
    status = next((s for kind, s in _NEOBATCH_STATUS if isinstance(exc, kind)), 500)
    if status >= 500:
        log.error("request failed", exc_info=exc, extra=log_fields(path=request.url.path))
        return error_response(status, exc.code, "internal error; see the console log")
    response = error_response(status, exc.code, exc.message)
    if isinstance(exc, QuoteExceedsCap):
        response.content.quote = exc.quote
    if isinstance(exc, RateLimited):
        response.headers["retry-after"] = str(exc.retry_after)
    return response


def on_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    if exc.status_code == 405 and b"%2f" in request.scope.get("raw_path", b"").lower():
        # An id holding an encoded "/" is routed on the decoded path and can land on another
        # route's methods; no resource has such an id: 404, not that route's 405.
        return error_response(404, "not_found", f"no route for {request.method} {request.url.path}")
    response = _http_error(request, exc)
    # Litestar's own headers go through: `Allow` on a 405, `Retry-After` where it sets one.
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    if status == 400 and isinstance(exc, ClientException):
        code, message = _describe_client_error(exc)
        return error_response(400, code, message)
    if status == 404 and exc.detail in ("", "Not Found"):
        return error_response(404, "not_found", f"no route for {request.method} {request.url.path}")
    if status == 405:
        return error_response(
            405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}"
        )
    if status >= 500:
        log.error("request failed", exc_info=exc, extra=log_fields(path=request.url.path))
        return error_response(status, "internal_error", "internal error; see the console log")
    return error_response(status, _HTTP_CODES.get(status, "error"), str(exc.detail))


def on_os_error(request: Request[Any, Any, Any], exc: OSError) -> Response[ErrorBody]:
    """A full disk under an upload's spool is the server's to fix, and the client's to retry:
    507 with a stable code. Any other OSError is unexpected."""
    if exc.errno not in _DISK_FULL:
        return on_unexpected_error(request, exc)
    log.error(
        "upload spool is full; mount a volume sized to the upload limit at NEOBATCH_SPOOL_DIR",
        extra=log_fields(path=request.url.path, error=str(exc)),
    )
    return error_response(
        507, "spool_full", "the server has no room to receive this upload now; retry later"
    )


def on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    # The text of an unexpected error may hold anything; it goes to the log, not the client.
    log.error("unhandled error", exc_info=exc, extra=log_fields(path=request.url.path))
    return error_response(500, "internal_error", "internal error; see the console log")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    NeobatchError: on_neobatch_error,
    HTTPException: on_http_exception,
    OSError: on_os_error,
    Exception: on_unexpected_error,
}
