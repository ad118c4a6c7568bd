"""Cluster-state metrics read from MongoDB and JetStream when /metrics is scraped.

Jobs by status, provisions by provider and status, live leased machines, provisioning time,
billed machine-seconds and USD by project, provider and GPU type (`common/billing.py`: every
machine ever leased, a held one up to now; counters, as the bills only grow), outbox lag and
consumer redeliveries are facts of the shared database and stream, not of one
process; every service exposes them (Prometheus queries take `max by (...)` across instances).
A scrape refreshes the snapshot at most every `cache_seconds`, so a fleet of scrapers costs the
database a few small aggregations per interval. A part that fails (Mongo or NATS away) is left
out and `neobatch_state_up{source=...}` says so; the scrape itself never fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import nats
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.billing import machine_cost
from neobatch.common.clock import Clock
from neobatch.common.contracts import ProvisionStatus
from neobatch.common.subjects import Namespace

log = logging.getLogger("neobatch.metrics")

# A provision in these states holds (or is acquiring, or is giving back) a machine.
LIVE_PROVISION_STATUSES = (
    ProvisionStatus.CREATING,
    ProvisionStatus.BOOTING,
    ProvisionStatus.RUNNING,
    ProvisionStatus.RELEASING,
)
PROVISIONING_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
REFRESH_TIMEOUT_SECONDS = 3.0


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Snapshot:
    def __init__(self) -> None:
        self.up: dict[str, bool] = {"mongo": False, "nats": False}
        self.jobs: dict[str, int] = {}
        self.provisions: dict[tuple[str, str], int] = {}
        # provider -> durations in seconds from created_at to running_at
        self.provisioning: dict[str, list[float]] = {}
        # (project, provider, gpu_type) -> (billed machine-seconds, USD)
        self.billed: dict[tuple[str, str, str], tuple[int, float]] = {}
        self.outbox_pending = 0
        self.outbox_lag_seconds = 0.0
        # consumer name -> (redelivered, pending, ack_pending)
        self.consumers: dict[str, tuple[int, int, int]] = {}


class StateCollector(Collector):
    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        nats_client: Callable[[], nats.NATS | None],
        ns: Namespace,
        clock: Clock,
        *,
        cache_seconds: float = 2.0,
    ) -> None:
        self._db = db
        self._nats_client = nats_client
        self._ns = ns
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._snapshot = Snapshot()
        self._taken_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Take a new snapshot unless the last one is fresh enough."""
        async with self._lock:
            if (
                self._taken_at is not None
                and time.monotonic() - self._taken_at < self._cache_seconds
            ):
                return
            snapshot = Snapshot()
            try:
                await asyncio.wait_for(self._read_mongo(snapshot), REFRESH_TIMEOUT_SECONDS)
                snapshot.up["mongo"] = True
            except Exception as exc:
                log.debug("state metrics: mongo part skipped (%s)", type(exc).__name__)
            try:
                await asyncio.wait_for(self._read_nats(snapshot), REFRESH_TIMEOUT_SECONDS)
                snapshot.up["nats"] = True
            except Exception as exc:
                log.debug("state metrics: nats part skipped (%s)", type(exc).__name__)
            self._snapshot = snapshot
            self._taken_at = time.monotonic()

    async def _group(self, collection: str, key: dict[str, str]) -> list[dict[str, Any]]:
        pipeline = [{"$group": {"_id": key, "n": {"$sum": 1}}}]
        cursor = await self._db[collection].aggregate(pipeline)
        return await cursor.to_list()

    async def _read_mongo(self, snap: Snapshot) -> None:
        for row in await self._group("jobs", {"status": "$status"}):
            snap.jobs[str(row["_id"].get("status"))] = int(row["n"])
        for row in await self._group("provisions", {"provider": "$provider", "status": "$status"}):
            key = (str(row["_id"].get("provider")), str(row["_id"].get("status")))
            snap.provisions[key] = int(row["n"])
        durations: dict[str, list[float]] = defaultdict(list)
        cursor = self._db["provisions"].find(
            {"running_at": {"$ne": None}}, {"provider": 1, "created_at": 1, "running_at": 1}
        )
        async for doc in cursor:
            if isinstance(doc.get("created_at"), datetime) and isinstance(
                doc.get("running_at"), datetime
            ):
                seconds = (_aware(doc["running_at"]) - _aware(doc["created_at"])).total_seconds()
                durations[str(doc.get("provider"))].append(max(0.0, seconds))
        snap.provisioning = dict(durations)
        snap.billed = await self._read_billed()
        snap.outbox_pending = await self._db["outbox"].count_documents({"published_at": None})
        oldest = await self._db["outbox"].find_one(
            {"published_at": None}, {"created_at": 1}, sort=[("created_at", 1)]
        )
        if oldest is not None and isinstance(oldest.get("created_at"), datetime):
            lag = (self._clock.now() - _aware(oldest["created_at"])).total_seconds()
            snap.outbox_lag_seconds = max(0.0, lag)

    async def _read_billed(self) -> dict[tuple[str, str, str], tuple[int, float]]:
        """Billed machine-seconds and USD of every leased machine, by the job's project."""
        fields = {"job_id": 1, "provider": 1, "lease": 1, "leased_at": 1, "running_at": 1}
        fields |= {"released_at": 1, "updated_at": 1}
        costs = []
        async for doc in self._db["provisions"].find({"leased_at": {"$ne": None}}, fields):
            cost = machine_cost(doc, self._clock.now())
            if cost is not None:
                costs.append((str(doc.get("job_id")), cost))
        job_ids = sorted({job_id for job_id, _ in costs})
        projects: dict[str, str] = {}
        if job_ids:
            async for job in self._db["jobs"].find({"_id": {"$in": job_ids}}, {"project": 1}):
                projects[job["_id"]] = str(job.get("project") or "")
        billed: dict[tuple[str, str, str], tuple[int, float]] = {}
        for job_id, cost in costs:
            key = (projects.get(job_id, ""), cost.provider, cost.gpu_type)
            seconds, usd = billed.get(key, (0, 0.0))
            billed[key] = (seconds + cost.billed_seconds, usd + cost.usd)
        return billed

    async def _read_nats(self, snap: Snapshot) -> None:
        nc = self._nats_client()
        if nc is None or not nc.is_connected:
            raise ConnectionError("not connected")
        for info in await nc.jetstream().consumers_info(self._ns.stream_name):
            name = info.name or info.config.durable_name or "?"
            snap.consumers[name] = (
                int(info.num_redelivered or 0),
                int(info.num_pending or 0),
                int(info.num_ack_pending or 0),
            )

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot
        up = GaugeMetricFamily(
            "neobatch_state_up",
            "Whether the last state read from a source worked.",
            labels=["source"],
        )
        for source, ok in snap.up.items():
            up.add_metric([source], 1.0 if ok else 0.0)
        yield up
        if snap.up["mongo"]:
            yield from self._mongo_families(snap)
        if snap.up["nats"]:
            yield from self._consumer_families(snap)

    def _mongo_families(self, snap: Snapshot) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("neobatch_jobs", "Jobs by status.", labels=["status"])
        for status, n in sorted(snap.jobs.items()):
            jobs.add_metric([status], n)
        yield jobs
        provisions = GaugeMetricFamily(
            "neobatch_provisions",
            "Provisions by provider and status.",
            labels=["provider", "status"],
        )
        live: dict[str, int] = defaultdict(int)
        for (provider, status), n in sorted(snap.provisions.items()):
            provisions.add_metric([provider, status], n)
            live[provider] += 0  # a provider with provisions shows 0, not nothing
            if status in LIVE_PROVISION_STATUSES:
                live[provider] += n
        yield provisions
        leased = GaugeMetricFamily(
            "neobatch_leased_machines",
            "Machines leased now (provisions creating, booting, running or releasing).",
            labels=["provider"],
        )
        for provider, n in sorted(live.items()):
            leased.add_metric([provider], n)
        yield leased
        histogram = HistogramMetricFamily(
            "neobatch_provisioning_seconds",
            "Time from a provision's request to its machine running.",
            labels=["provider"],
        )
        for provider, values in sorted(snap.provisioning.items()):
            buckets = [
                (str(le), float(sum(v <= le for v in values))) for le in PROVISIONING_BUCKETS
            ]
            buckets.append(("+Inf", float(len(values))))
            histogram.add_metric([provider], buckets, sum_value=sum(values))
        yield histogram
        yield from _billed_families(snap)
        yield GaugeMetricFamily(
            "neobatch_outbox_pending",
            "Outbox entries not yet published.",
            value=snap.outbox_pending,
        )
        yield GaugeMetricFamily(
            "neobatch_outbox_lag_seconds",
            "Age of the oldest unpublished outbox entry (0 when none).",
            value=snap.outbox_lag_seconds,
        )

    def _consumer_families(self, snap: Snapshot) -> Iterator[Metric]:
        redelivered = GaugeMetricFamily(
            "neobatch_consumer_redelivered",
            "Messages redelivered to a durable consumer and not yet acknowledged "
            "(JetStream num_redelivered; cumulative retries: neobatch_handler_retries_total).",
            labels=["consumer"],
        )
        pending = GaugeMetricFamily(
            "neobatch_consumer_pending",
            "Messages not yet delivered to a consumer.",
            labels=["consumer"],
        )
        ack_pending = GaugeMetricFamily(
            "neobatch_consumer_ack_pending",
            "Messages delivered to a consumer and not yet acknowledged.",
            labels=["consumer"],
        )
        for name, (n_redelivered, n_pending, n_ack_pending) in sorted(snap.consumers.items()):
            redelivered.add_metric([name], n_redelivered)
            pending.add_metric([name], n_pending)
            ack_pending.add_metric([name], n_ack_pending)
        yield redelivered
        yield pending
        yield ack_pending


def _billed_families(snap: Snapshot) -> Iterator[Metric]:
    labels = ["project", "provider", "gpu_type"]
    seconds = CounterMetricFamily(
        "neobatch_billed_machine_seconds",
        "Machine-seconds billed (lease to confirmed release, in the provider's increment).",
        labels=labels,
    )
    usd = CounterMetricFamily(
        "neobatch_billed_usd",
        "USD billed for leased machines, at their lease price.",
        labels=labels,
    )
    for key, (n_seconds, n_usd) in sorted(snap.billed.items()):
        seconds.add_metric(list(key), n_seconds)
        usd.add_metric(list(key), round(n_usd, 6))
    yield seconds
    yield usd
