"""The notifier's Prometheus metrics: deliveries by outcome, attempt latency, and the backlog
(pending deliveries, the age of the oldest due one) read from MongoDB at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "neobatch_webhook_attempts",
            "Webhook delivery attempts, by what they led to (delivered, retry, failed).",
            ["outcome"],
            registry=registry,
        )
        self.deliveries = Counter(
            "neobatch_webhook_deliveries",
            "Webhook deliveries that ended, by outcome (delivered, failed, cancelled).",
            ["outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "neobatch_webhook_attempt_latency_seconds",
            "Time from sending a webhook to the receiver's answer (or the timeout).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def attempt(self, status: str, seconds: float) -> None:
        self.attempts.labels(outcome=status).inc()
        self.latency.observe(seconds)
        if status in ("delivered", "failed"):
            self.outcome(status)

    def outcome(self, status: str) -> None:
        self.deliveries.labels(outcome=status).inc()


class BacklogCollector(Collector):
    """Pending deliveries and the oldest due one's wait, as last refreshed."""

    def __init__(self) -> None:
        self.pending = 0
        self.oldest_due_seconds = 0.0

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "neobatch_webhook_backlog", "Webhook deliveries pending.", value=self.pending
        )
        yield GaugeMetricFamily(
            "neobatch_webhook_oldest_due_seconds",
            "How long the oldest due webhook delivery has waited past its time.",
            value=self.oldest_due_seconds,
        )
