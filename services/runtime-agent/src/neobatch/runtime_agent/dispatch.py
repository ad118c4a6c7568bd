"""Dispatch policy: what a request's outcome is, when to retry, how many run at once.

No I/O here: `dispatch_all` drives injected `send` and `on_result` callables (the engine
client and the checkpoint writer), so the concurrency and stop rules are testable alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from neobatch.common.batch_input import BatchRequest
from neobatch.common.contracts import RequestCounts

# AIBrix's retry set (reference §4.9): overload and transient upstream errors. Other 4xx are
# the request's own fault and would fail the same way again.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


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


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    max_retries: int = 5
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 5.0

    def should_retry(self, attempts_made: int, status_code: int | None) -> bool:
        """`status_code` None means a transport error (connection refused, reset, timeout)."""
        if attempts_made > self.max_retries:
            return False
        return status_code is None or status_code in RETRYABLE_STATUSES

    def delay_seconds(self, attempts_made: int, jitter: float = 1.0) -> float:
        """Capped exponential backoff before retry `attempts_made` (1-based).

        `jitter` in (0, 1] spreads retries of requests that failed together (a 429 burst).
        """
        delay = self.base_delay_seconds * 2 ** max(0, attempts_made - 1)
        return min(delay, self.max_delay_seconds) * jitter


class Tally:
    """Running request counts: results found at start plus results of this run."""

    def __init__(self, total: int, completed: int = 0, failed: int = 0) -> None:
        self.total = total
        self.completed = completed
        self.failed = failed

    def add(self, result: RequestResult) -> None:
        if result.ok:
            self.completed += 1
        else:
            self.failed += 1

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


class DispatchSummary(msgspec.Struct, frozen=True, kw_only=True):
    sent: int
    # True when `should_stop` ended dispatch before the input ran out.
    stopped: bool


async def dispatch_all(
    requests: AsyncIterator[BatchRequest],
    send: Callable[[BatchRequest], Awaitable[RequestResult]],
    on_result: Callable[[RequestResult], Awaitable[None]],
    *,
    concurrency: int,
    should_stop: Callable[[], bool],
) -> DispatchSummary:
    """Send every request with at most `concurrency` in flight.

    `should_stop` is checked before each new request (cancel, expiry, lost lease): requests
    already in flight finish and are recorded, nothing new starts. An exception from `send`
    or `on_result` cancels the rest and propagates.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    # The input iterator is shared; an async generator may not be advanced concurrently.
    next_lock = asyncio.Lock()
    sent = 0
    stopped = False
    exhausted = False

    async def worker() -> None:
        nonlocal sent, stopped, exhausted
        while not exhausted:
            if should_stop():
                stopped = True
                return
            async with next_lock:
                if exhausted:
                    return
                request = await anext(requests, None)
                if request is None:
                    exhausted = True
                    return
                sent += 1
            await on_result(await send(request))

    async with asyncio.TaskGroup() as group:
        for n in range(concurrency):
            group.create_task(worker(), name=f"dispatch-{n}")
    return DispatchSummary(sent=sent, stopped=stopped and not exhausted)
