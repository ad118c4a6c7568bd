"""Dispatch policy: what a request's outcome is, when to retry, how many run at once.

No I/O here: `dispatch_all` drives injected `send` and `on_result` callables (the engine
client and the checkpoint writer), so the concurrency and stop rules are testable alone, and
the adaptive concurrency controller is a plain state machine fed with outcomes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol, TypeVar

import msgspec

from neobatch.common.batch_input import BatchRequest
from neobatch.common.contracts import ClientSpec, RequestCounts

# AIBrix's retry set (reference §4.9): overload and transient upstream errors. Other 4xx are
# the request's own fault and would fail the same way again.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Answers that mean "too much load": the adaptive controller backs off on these (and on
# timeouts). A plain 500 is the engine failing one request, not a sign of overload.
CAPACITY_STATUSES = frozenset({408, 429, 503, 504})
# Statuses whose `Retry-After` header is honoured.
RETRY_AFTER_STATUSES = frozenset({429, 503})
# A server asking for a longer wait than this (or than max_delay, if larger) is not obeyed
# beyond it: one bad header must not park a request for an hour.
RETRY_AFTER_CAP_SECONDS = 60.0


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

    def delay_seconds(
        self, attempts_made: int, jitter: float = 1.0, retry_after: float | None = None
    ) -> float:
        """Capped exponential backoff before retry `attempts_made` (1-based).

        `jitter` in (0, 1] spreads retries of requests that failed together (a 429 burst).
        `retry_after` (the server's `Retry-After`, in seconds) wins over the backoff, capped
        at max(max_delay_seconds, RETRY_AFTER_CAP_SECONDS).
        """
        if retry_after is not None:
            return min(max(0.0, retry_after), max(self.max_delay_seconds, RETRY_AFTER_CAP_SECONDS))
        delay = self.base_delay_seconds * 2 ** max(0, attempts_made - 1)
        return min(delay, self.max_delay_seconds) * jitter


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds to wait: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

    None when absent or unparseable; a date in the past is 0. `now` is injected (pure module).
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now is None:
        return None  # A date cannot be turned into a wait without the current time.
    return max(0.0, (when - now).total_seconds())


_T = TypeVar("_T")


# --- concurrency ---------------------------------------------------------------------------------


class Outcome(msgspec.Struct, frozen=True):
    """One attempt as the concurrency controller sees it."""

    # HTTP status; None when no response came back (transport error or timeout).
    status: int | None
    latency_seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def capacity_error(self) -> bool:
        return self.timed_out or self.status in CAPACITY_STATUSES


class ConcurrencyLimit(Protocol):
    """What `dispatch_all` needs: a limit that may change while it runs."""

    @property
    def limit(self) -> int: ...

    @property
    def maximum(self) -> int: ...

    def record(self, outcome: Outcome) -> None: ...


class FixedLimit:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("concurrency must be >= 1")
        self.limit = self.maximum = limit

    def record(self, outcome: Outcome) -> None:
        pass


class AimdController:
    """Additive-increase / multiplicative-decrease concurrency limit (AIBrix's, reference §4.9).

    Starts at `initial`; every `healthy_window` successes the limit grows by
    `additive_increase`, or while still probing (before the first decrease) by
    max(additive_increase, ceil(25% of the limit)); never above `maximum`. A capacity error
    (408/429/503/504 or a timeout) multiplies it by `backoff`, a latency spike (a success
    slower than `spike_factor` x the EWMA of success latencies) by `latency_backoff`; never
    below 1. After a decrease further decreases wait until `limit` more attempts finished:
    the requests that were in flight together fail together, and that is one signal, not
    fifty. Pure: no clock, fed one `Outcome` per attempt.
    """

    def __init__(
        self,
        *,
        initial: int,
        maximum: int,
        healthy_window: int = 8,
        additive_increase: int = 1,
        backoff: float = 0.7,
        latency_backoff: float = 0.8,
        spike_factor: float = 1.75,
        ewma_alpha: float = 0.2,
        ewma_min_samples: int = 8,
    ) -> None:
        if maximum < 1 or healthy_window < 1 or additive_increase < 1:
            raise ValueError("maximum, healthy_window and additive_increase must be >= 1")
        self.maximum = maximum
        self.limit = max(1, min(initial, maximum))
        self.healthy_window = healthy_window
        self.additive_increase = additive_increase
        self.backoff = backoff
        self.latency_backoff = latency_backoff
        self.spike_factor = spike_factor
        self.ewma_alpha = ewma_alpha
        self.ewma_min_samples = ewma_min_samples
        self.probing = True
        self.ewma: float | None = None
        self.samples = 0
        self.increases = 0
        self.decreases = 0
        self._healthy = 0
        # Attempts seen since the last decrease; None before the first one.
        self._since_decrease: int | None = None

    def record(self, outcome: Outcome) -> None:
        if self._since_decrease is not None:
            self._since_decrease += 1
        if outcome.capacity_error:
            self._decrease(self.backoff)
            return
        if not outcome.ok:
            return  # the request's own failure (4xx, plain 500): says nothing about load
        spike = self._observe_latency(outcome.latency_seconds)
        if spike:
            self._decrease(self.latency_backoff)
            return
        self._healthy += 1
        if self._healthy >= self.healthy_window:
            self._healthy = 0
            step = self.additive_increase
            if self.probing:
                step = max(step, math.ceil(self.limit * 0.25))
            grown = min(self.maximum, self.limit + step)
            if grown > self.limit:
                self.limit = grown
                self.increases += 1

    def _observe_latency(self, latency: float) -> bool:
        ewma = self.ewma
        spike = (
            ewma is not None
            and self.samples >= self.ewma_min_samples
            and latency > self.spike_factor * ewma
        )
        self.samples += 1
        a = self.ewma_alpha
        self.ewma = latency if ewma is None else a * latency + (1 - a) * ewma
        return spike

    def _decrease(self, factor: float) -> None:
        self._healthy = 0
        if self._since_decrease is not None and self._since_decrease < self.limit:
            return  # still the same burst: one decrease per round of in-flight requests
        self.probing = False
        self._since_decrease = 0
        lowered = max(1, min(self.limit - 1, math.floor(self.limit * factor)))
        if lowered < self.limit:
            self.limit = lowered
            self.decreases += 1


# The limit an adaptive run starts at (AIBrix: the source capacity, 8 for SSH runtimes).
ADAPTIVE_INITIAL = 8


class DispatchDefaults(msgspec.Struct, frozen=True, kw_only=True):
    """The agent's configured defaults, used for whatever the job's client block leaves unset."""

    concurrency: int = 64
    # Per request; generations can be long (AIBrix's fixed 30 s read timeout retried them).
    request_timeout_seconds: float = 600.0
    max_retries: int = 5
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 5.0
    # AIMD concurrency (start at 8, grow while healthy, back off on overload), as AIBrix.
    adaptive: bool = True
    healthy_window: int = 8
    additive_increase: int = 1


class DispatchConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How one batch is dispatched: the job's `client` block over the agent's defaults."""

    max_concurrency: int
    initial_concurrency: int
    adaptive: bool
    healthy_window: int
    additive_increase: int
    request_timeout_seconds: float
    retry: RetryPolicy

    @classmethod
    def resolve(cls, client: ClientSpec, defaults: DispatchDefaults) -> DispatchConfig:
        adaptive = _pick(client.adaptive_concurrency, defaults.adaptive)
        if client.max_concurrency is not None:
            maximum = client.max_concurrency
        elif client.adaptive_max_factor is not None and adaptive:
            # AIBrix: without an explicit max, the ceiling is the start limit times the factor.
            maximum = min(1024, math.ceil(ADAPTIVE_INITIAL * client.adaptive_max_factor))
        else:
            maximum = defaults.concurrency
        spec = client.retry_policy
        retry = RetryPolicy(
            max_retries=_pick(spec and spec.max_retries, defaults.max_retries),
            base_delay_seconds=_pick(spec and spec.base_delay_seconds, defaults.base_delay_seconds),
            max_delay_seconds=_pick(spec and spec.max_delay_seconds, defaults.max_delay_seconds),
        )
        return cls(
            max_concurrency=maximum,
            initial_concurrency=min(ADAPTIVE_INITIAL, maximum) if adaptive else maximum,
            adaptive=adaptive,
            healthy_window=_pick(client.adaptive_healthy_window, defaults.healthy_window),
            additive_increase=_pick(client.adaptive_additive_increase, defaults.additive_increase),
            request_timeout_seconds=_pick(
                client.request_timeout_seconds, defaults.request_timeout_seconds
            ),
            retry=retry,
        )

    def controller(self) -> ConcurrencyLimit:
        if not self.adaptive:
            return FixedLimit(self.max_concurrency)
        return AimdController(
            initial=self.initial_concurrency,
            maximum=self.max_concurrency,
            healthy_window=self.healthy_window,
            additive_increase=self.additive_increase,
        )


def _pick(value: _T | None, default: _T) -> _T:
    # Presence-aware (AIBrix): unset means the default, 0 is a value.
    return default if value is None else value


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
    concurrency: int | None = None,
    controller: ConcurrencyLimit | None = None,
    should_stop: Callable[[], bool],
) -> DispatchSummary:
    """Send every request with at most `controller.limit` in flight (or a fixed `concurrency`).

    The limit may change while this runs (the controller is fed by `send`'s attempts): one
    worker per possible slot (`controller.maximum`), each waiting until fewer than `limit`
    requests are in flight before taking the next one. `should_stop` is checked before each
    new request (cancel, expiry, lost lease): requests already in flight finish and are
    recorded, nothing new starts. An exception from `send` or `on_result` cancels the rest
    and propagates.
    """
    if controller is None:
        if concurrency is None:
            raise ValueError("pass concurrency or controller")
        controller = FixedLimit(concurrency)
    # The input iterator is shared; an async generator may not be advanced concurrently.
    next_lock = asyncio.Lock()
    slots = asyncio.Condition()
    in_flight = 0
    sent = 0
    stopped = False
    exhausted = False

    limit = controller

    def free_slot() -> bool:
        return exhausted or in_flight < limit.limit

    async def worker() -> None:
        nonlocal sent, stopped, exhausted, in_flight
        while not exhausted:
            async with slots:
                await slots.wait_for(free_slot)
                in_flight += 1
            try:
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
            finally:
                async with slots:
                    in_flight -= 1
                    # The limit may have grown (a success) or the input ended: re-check all.
                    slots.notify_all()

    async with asyncio.TaskGroup() as group:
        for n in range(controller.maximum):
            group.create_task(worker(), name=f"dispatch-{n}")
    return DispatchSummary(sent=sent, stopped=stopped and not exhausted)
