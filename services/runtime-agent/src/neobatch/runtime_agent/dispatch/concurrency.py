"""How many requests run at once: a fixed limit, or AIMD fed with each attempt's outcome. Pure."""

from __future__ import annotations

import math
from typing import Protocol

import msgspec

# Answers that mean "too much load": the adaptive controller backs off on these (and on
# timeouts). A plain 500 is the engine failing one request, not a sign of overload.
CAPACITY_STATUSES = frozenset({408, 429, 503, 504})


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

    # What the "dispatch ended" log names: which controller, and the highest limit it reached.
    @property
    def name(self) -> str: ...

    @property
    def peak(self) -> int: ...

    def record(self, outcome: Outcome) -> None: ...


class FixedLimit:
    name = "fixed"

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("concurrency must be >= 1")
        self.limit = self.maximum = self.peak = limit

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

    name = "aimd"

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
        self.peak = self.limit
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
            self.limit = min(self.maximum, self.limit + step)
            self.peak = max(self.peak, self.limit)

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
