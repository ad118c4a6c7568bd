"""Process-level Prometheus metrics: counters code deep in a service increments.

The metric objects live here, registered in no global registry; every `ServiceRuntime` puts
them into its own registry (`new_registry`), next to the collectors that read cluster state at
scrape time (`neobatch.common.state_metrics`). Labels carry subjects, outcomes and provider
names only — never ids, URLs or keys.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

EVENTS_HANDLED = Counter(
    "neobatch_events_handled",
    "Events a handler of this process finished without error.",
    ["service", "subject"],
    registry=None,
)
HANDLER_RETRIES = Counter(
    "neobatch_handler_retries",
    "Handler failures that sent the event back for a delayed redelivery.",
    ["service", "subject"],
    registry=None,
)
DISPATCHED_REQUESTS = Counter(
    "neobatch_dispatch_requests",
    "Batch requests this runtime-agent sent to an engine, by final outcome (rate = dispatch rate).",
    ["outcome"],
    registry=None,
)
REQUEST_LATENCY = Histogram(
    "neobatch_request_latency_seconds",
    "Time from sending a batch request to its final answer, retries included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=None,
)
PROCESS_METRICS = (EVENTS_HANDLED, HANDLER_RETRIES, DISPATCHED_REQUESTS, REQUEST_LATENCY)


def new_registry() -> CollectorRegistry:
    """A registry holding this process's counters; a runtime adds its own collectors to it."""
    registry = CollectorRegistry(auto_describe=False)
    for metric in PROCESS_METRICS:
        registry.register(metric)
    return registry


class _HasOk(Protocol):
    @property
    def ok(self) -> bool: ...


R = TypeVar("R", bound=_HasOk)
A = TypeVar("A")


def timed_dispatch(send: Callable[[A], Awaitable[R]]) -> Callable[[A], Awaitable[R]]:
    """Wrap an engine `send`: count each request by outcome and observe its latency."""

    async def send_and_observe(request: A) -> R:
        started = time.monotonic()
        result = await send(request)
        REQUEST_LATENCY.observe(time.monotonic() - started)
        DISPATCHED_REQUESTS.labels(outcome="ok" if result.ok else "error").inc()
        return result

    return send_and_observe
