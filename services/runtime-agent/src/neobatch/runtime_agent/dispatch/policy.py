"""Dispatch policy: when to retry and how long to wait, and how one batch is dispatched
(the job's `client` block over the agent's defaults). Pure.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import msgspec

from neobatch.common.contracts import ClientSpec
from neobatch.runtime_agent.dispatch.concurrency import (
    AimdController,
    ConcurrencyLimit,
    FixedLimit,
)
from neobatch.runtime_agent.dispatch.engine_load import (
    UNKNOWN_CAPACITY_INITIAL,
    VLLM_DEFAULT_MAX_NUM_SEQS,
    EngineLoadController,
    engine_maximum,
)

# AIBrix's retry set (reference §4.9): overload and transient upstream errors. Other 4xx are
# the request's own fault and would fail the same way again.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Statuses whose `Retry-After` header is honoured.
RETRY_AFTER_STATUSES = frozenset({429, 503})
# A server asking for a longer wait than this (or than max_delay, if larger) is not obeyed
# beyond it: one bad header must not park a request for an hour.
RETRY_AFTER_CAP_SECONDS = 60.0

_T = TypeVar("_T")

# The largest engine response kept, by default: generous for LLM output (a 32k-token completion
# with logprobs is well under it). An answer over the cap becomes that line's error
# `response_too_large` and is not retried (the same request would generate as much again).
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# No setting may go above this: one result is stored whole in one checkpoint page, and a
# MongoDB document holds at most 16 MiB.
MAX_RESPONSE_BYTES_LIMIT = 15 * 1024 * 1024


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


# --- concurrency ---------------------------------------------------------------------------------


# After a cancel, expiry or lost lease, the seconds requests in flight may still answer.
DEFAULT_CANCEL_GRACE_SECONDS = 30.0

# The limit an adaptive run starts at (AIBrix: the source capacity, 8 for SSH runtimes).
ADAPTIVE_INITIAL = 8


class DispatchDefaults(msgspec.Struct, frozen=True, kw_only=True):
    """The agent's configured defaults, used for whatever the job's client block leaves unset."""

    # The most in flight for an engine without load metrics (AIMD or fixed); one that reports
    # vLLM's gauges gets ENGINE_MAXIMUM_FACTOR x its max sequences instead.
    concurrency: int = 64
    # Read the engine's /metrics and steer its queue (EngineLoadController) when it has them.
    engine_metrics: bool = True
    # Per request; generations can be long (AIBrix's fixed 30 s read timeout retried them).
    request_timeout_seconds: float = 600.0
    max_retries: int = 5
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 5.0
    # AIMD concurrency (start at 8, grow while healthy, back off on overload), as AIBrix.
    adaptive: bool = True
    healthy_window: int = 8
    additive_increase: int = 1
    # The operator's cap on one response body; a job's `client.max_response_bytes` may only
    # lower it.
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # After a cancel, expiry or lost lease, how long requests already sent may still answer
    # before they are abandoned: a hung request must not keep a rented machine for its whole
    # request timeout.
    cancel_grace_seconds: float = DEFAULT_CANCEL_GRACE_SECONDS


class DispatchConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How one batch is dispatched: the job's `client` block over the agent's defaults."""

    max_concurrency: int
    initial_concurrency: int
    adaptive: bool
    healthy_window: int
    additive_increase: int
    request_timeout_seconds: float
    retry: RetryPolicy
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # Requests in flight when the batch is interrupted get this long, then are abandoned.
    cancel_grace_seconds: float = DEFAULT_CANCEL_GRACE_SECONDS
    # Adaptive and allowed to read the engine's load: EngineLoadController if it reports it.
    engine_aware: bool = False
    # The most in flight under EngineLoadController (the job's max, else from the engine).
    engine_maximum: int = 1
    # The engine's max sequences: its launch's `--max-num-seqs`, else vLLM's default.
    engine_capacity: int = VLLM_DEFAULT_MAX_NUM_SEQS
    # Whether `engine_capacity` came from the launch (else it is a guess to learn from).
    engine_capacity_known: bool = False

    @classmethod
    def resolve(
        cls, client: ClientSpec, defaults: DispatchDefaults, max_num_seqs: int | None = None
    ) -> DispatchConfig:
        """`max_num_seqs`: the engine's `--max-num-seqs` when its launch sets one."""
        adaptive = _pick(client.adaptive_concurrency, defaults.adaptive)
        job_maximum: int | None = None
        if client.max_concurrency is not None:
            job_maximum = client.max_concurrency
        elif client.adaptive_max_factor is not None and adaptive:
            # AIBrix: without an explicit max, the ceiling is the start limit times the factor.
            job_maximum = min(1024, math.ceil(ADAPTIVE_INITIAL * client.adaptive_max_factor))
        maximum = defaults.concurrency if job_maximum is None else job_maximum
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
            max_response_bytes=_lower(client.max_response_bytes, defaults.max_response_bytes),
            cancel_grace_seconds=defaults.cancel_grace_seconds,
            engine_aware=adaptive and defaults.engine_metrics,
            engine_maximum=engine_maximum(max_num_seqs) if job_maximum is None else job_maximum,
            engine_capacity=max_num_seqs or VLLM_DEFAULT_MAX_NUM_SEQS,
            engine_capacity_known=max_num_seqs is not None,
        )

    @property
    def connections(self) -> int:
        """The most requests any controller this config may pick can have in flight."""
        if self.engine_aware:
            return max(self.max_concurrency, self.engine_maximum)
        return self.max_concurrency

    def controller(self, engine_load: bool = False) -> ConcurrencyLimit:
        """`engine_load`: the engine reports its load (vLLM's /metrics answered)."""
        if not self.adaptive:
            return FixedLimit(self.max_concurrency)
        if engine_load and self.engine_aware:
            return EngineLoadController(
                capacity=min(self.engine_capacity, self.engine_maximum),
                maximum=self.engine_maximum,
                # Unknown max sequences: start lower and probe up rather than flood the queue.
                initial=None if self.engine_capacity_known else UNKNOWN_CAPACITY_INITIAL,
            )
        return AimdController(
            initial=self.initial_concurrency,
            maximum=self.max_concurrency,
            healthy_window=self.healthy_window,
            additive_increase=self.additive_increase,
        )


def _lower(value: int | None, cap: int) -> int:
    # A job may ask for less than the operator allows, never more.
    return cap if value is None else min(value, cap)


def _pick(value: _T | None, default: _T) -> _T:
    # Presence-aware (AIBrix): unset means the default, 0 is a value.
    return default if value is None else value
