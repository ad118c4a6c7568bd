"""Composition root of the notifier: the `job.status_changed` consumer that stores deliveries,
and the delivery workers that send them."""

from __future__ import annotations

from neobatch.common.aio import pause
from neobatch.common.runtime import ServiceRuntime
from neobatch.notifier.delivery import Deliverer
from neobatch.notifier.handlers import SERVICE, Fanout, register
from neobatch.notifier.metrics import BacklogCollector, NotifierMetrics
from neobatch.notifier.sender import Sender
from neobatch.notifier.settings import NotifierSettings
from neobatch.notifier.store import DeliveryStore

BACKLOG_REFRESH_SECONDS = 5.0


def build(settings: NotifierSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(SERVICE, settings.common)
    store = DeliveryStore(runtime.db)
    sender = Sender(
        settings.urls,
        timeout_seconds=settings.timeout_seconds,
        max_response_bytes=settings.max_response_bytes,
        limit=settings.concurrency,
    )
    metrics = NotifierMetrics(runtime.metrics)
    backlog = BacklogCollector()
    runtime.metrics.register(backlog)
    deliverer = Deliverer(
        store,
        sender,
        runtime.clock,
        urls=settings.urls,
        sealing=settings.sealing,
        retry=settings.retry,
        lease_seconds=settings.lease_seconds,
        poll_seconds=settings.poll_seconds,
        metrics=metrics,
        order_wait_seconds=settings.order_wait_seconds,
    )
    register(runtime.broker, runtime.ns, Fanout(store, runtime.clock, deliverer.wake))
    runtime.add_startup(store.ensure_indexes)
    for number in range(settings.concurrency):
        runtime.add_loop(f"delivery-{number}", deliverer.run_worker)

    async def refresh_backlog() -> None:
        while True:
            backlog.pending = await store.count_pending()
            backlog.oldest_due_seconds = await store.oldest_due_age(runtime.clock.now())
            await pause(BACKLOG_REFRESH_SECONDS)

    runtime.add_loop("backlog", refresh_backlog)
    return runtime
