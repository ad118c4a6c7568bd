"""What dispatch produces: one `RequestResult` per request, and the `Tally` of a batch's. Pure."""

from __future__ import annotations

import msgspec

from neobatch.common.contracts import RequestCounts


class RequestResult(msgspec.Struct, frozen=True, kw_only=True):
    """The final outcome of one request, after retries."""

    line_index: int
    custom_id: str
    # HTTP status of the last attempt; None when no response came back at all.
    status_code: int | None = None
    request_id: str = ""
    # The engine's JSON response body, raw: stored and written out without re-encoding.
    body: bytes | None = None
    # Set when there is no usable HTTP response (transport error, expiry).
    error_code: str = ""
    error_message: str = ""
    attempts: int = 0

    @property
    def ok(self) -> bool:
        code = self.status_code
        return code is not None and 200 <= code < 300 and not self.error_code


class Tally:
    """Running request counts: results found at start plus results of this run."""

    def __init__(self, total: int, completed: int = 0, failed: int = 0) -> None:
        self.total = total
        self.completed = completed
        self.failed = failed

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    def counts(self) -> RequestCounts:
        # Capped by total, as AIBrix does, so a replayed result can never over-count.
        return RequestCounts(
            total=self.total,
            completed=min(self.completed, self.total),
            failed=min(self.failed, max(0, self.total - self.completed)),
        )
