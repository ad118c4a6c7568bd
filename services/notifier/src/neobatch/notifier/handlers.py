"""The notifier's event subscriber: each `job.status_changed` becomes one delivery per
(enabled endpoint of the job's project that chose its type, webhook), stored before the event is
acknowledged. Idempotent: a delivery's id is (endpoint, webhook), so a replayed event adds
nothing."""

from __future__ import annotations

from collections.abc import Callable

from faststream.nats import NatsBroker

from neobatch.common.broker import subscribe
from neobatch.common.clock import Clock
from neobatch.common.contracts import JobStatusChanged
from neobatch.common.errors import NotFound
from neobatch.common.subjects import Namespace
from neobatch.common.webhooks import webhook_id
from neobatch.notifier.policy import webhooks_for
from neobatch.notifier.store import PENDING, DeliveryStore

SERVICE = "notifier"


class Fanout:
    def __init__(self, store: DeliveryStore, clock: Clock, wake: Callable[[], None]) -> None:
        self._store, self._clock, self._wake = store, clock, wake

    async def on_status_changed(self, event: JobStatusChanged) -> None:
        job = await self._store.find_job(event.job_id)
        if job is None:
            # The job and its event are written in one transaction: not there yet means a read
            # from a lagging member; the redelivery finds it.
            raise NotFound(f"job {event.job_id} not found")
        endpoints = await self._store.list_enabled_endpoints(job["project"])
        if not endpoints:
            return
        wanted = {t for e in endpoints for t in e.get("event_types") or []}
        now = self._clock.now()
        added = False
        for hook in webhooks_for(event, job.get("batch_id"), wanted):
            for endpoint in endpoints:
                if hook.event_type not in (endpoint.get("event_types") or []):
                    continue
                key = f"{event.event_id}:{hook.event_type}"
                added |= await self._store.save_new_delivery(
                    {
                        "_id": f"{endpoint['_id']}:{key}",
                        "webhook_id": webhook_id(endpoint["_id"], key),
                        "endpoint_id": endpoint["_id"],
                        "project": job["project"],
                        "event_id": hook.body_id,
                        "event_type": hook.event_type,
                        "job_id": event.job_id,
                        "batch_id": job.get("batch_id"),
                        "event_at": event.occurred_at,
                        "body": hook.body,
                        "status": PENDING,
                        "attempts": [],
                        "attempt_count": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "lease_owner": None,
                        "lease_until": None,
                    }
                )
        if added:
            self._wake()


def register(broker: NatsBroker, ns: Namespace, fanout: Fanout) -> None:
    subscribe(broker, ns, SERVICE, JobStatusChanged, fanout.on_status_changed, max_workers=4)
