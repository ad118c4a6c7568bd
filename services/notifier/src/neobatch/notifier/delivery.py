"""The delivery loop: workers claim due deliveries under a lease, send them signed, record the
attempt and decide the next (`policy.judge`).

At least once: a delivery is `pending` until an attempt's answer is recorded; a notifier killed
mid-attempt leaves its lease to expire (`NEOBATCH_WEBHOOK_LEASE_SECONDS`) and any notifier then
sends it again, with the same `webhook-id` (fixed on the document) and a fresh timestamp and
signature. A 2xx whose recording was lost is the one case a receiver sees a webhook twice.
Per-batch order (`policy.order_hold`): a delivery waits while the same endpoint's delivery of
the same job's lower `job_version` (or, without versions, earlier event) is pending, and waits a
bounded time (`NEOBATCH_WEBHOOK_ORDER_WAIT_SECONDS`) for a predecessor not yet stored (an event
JetStream redelivers late).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

from neobatch.common.aio import wait_for_event
from neobatch.common.clock import Clock
from neobatch.common.ids import new_id
from neobatch.common.logs import log_fields
from neobatch.common.sealing import SealingKey
from neobatch.common.webhooks import UrlPolicy, UrlRefused, check_url, signature_header
from neobatch.notifier.metrics import NotifierMetrics
from neobatch.notifier.policy import RetryPolicy, judge, order_hold, should_disable
from neobatch.notifier.sender import Answer, Sender
from neobatch.notifier.store import DeliveryStore

log = logging.getLogger("neobatch.notifier")


class Deliverer:
    def __init__(
        self,
        store: DeliveryStore,
        sender: Sender,
        clock: Clock,
        *,
        urls: UrlPolicy,
        sealing: SealingKey,
        retry: RetryPolicy,
        lease_seconds: float,
        poll_seconds: float,
        metrics: NotifierMetrics,
        order_wait_seconds: float = 10.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._store, self._sender, self._clock = store, sender, clock
        self._urls, self._sealing, self._retry = urls, sealing, retry
        self._lease, self._poll = lease_seconds, poll_seconds
        self._metrics = metrics
        self._order_wait = order_wait_seconds
        self._rand = rand
        self._owner = new_id("notifier")
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run_worker(self) -> None:
        """One worker: deliver what is due, else wait to be woken or for the poll interval."""
        while True:
            try:
                if await self.deliver_one():
                    continue
            except Exception:
                # A delivery that broke the worker stays leased; its lease expiring retries it.
                log.exception("delivery failed unexpectedly")
            self._wake.clear()
            await wait_for_event(self._wake, self._poll)

    async def deliver_one(self) -> bool:
        """Claim and handle one due delivery; False when none is due."""
        now = self._clock.now()
        doc = await self._store.claim_due(self._owner, now, self._lease)
        if doc is None:
            return False
        hold = await self._order_hold(doc, now)
        if hold is not None:
            await self._store.save_postponed(doc["_id"], self._owner, hold)
            return True
        endpoint = await self._store.find_endpoint(doc["endpoint_id"])
        if endpoint is None or endpoint.get("status") != "enabled":
            why = "endpoint deleted" if endpoint is None else "endpoint disabled"
            await self._store.save_closed(doc["_id"], self._owner, "cancelled", why)
            self._metrics.outcome("cancelled")
            return True
        await self._attempt(doc, endpoint)
        return True

    async def _order_hold(self, doc: dict[str, Any], now: datetime) -> datetime | None:
        earlier = await self._store.find_earlier_pending(doc)
        version = int(doc.get("job_version") or 0)
        previous = None
        if earlier is None and doc.get("ordered") and version > 0 and doc.get("old_status"):
            found = await self._store.find_previous_version(doc)
            previous = (found["job_version"], found.get("new_status")) if found else None
        return order_hold(
            now=now,
            stored_at=doc["created_at"],
            ordered=bool(doc.get("ordered")),
            job_version=version,
            old_status=doc.get("old_status"),
            earlier_pending_at=earlier["next_attempt_at"] if earlier else None,
            previous=previous,
            wait_seconds=self._order_wait,
        )

    async def _attempt(self, doc: dict[str, Any], endpoint: dict[str, Any]) -> None:
        started = self._clock.now()
        answer = await self._send(doc, endpoint, started)
        now = self._clock.now()
        attempt_number = int(doc.get("attempt_count") or 0) + 1
        first = doc.get("first_attempt_at") or started
        outcome = judge(
            status_code=answer.status_code,
            error=answer.error,
            retry_after=answer.retry_after,
            attempt=attempt_number,
            first_attempt_at=first,
            now=now,
            policy=self._retry,
            rand=self._rand(),
        )
        disable_reason = outcome.disable_reason
        if answer.refused:
            disable_reason = f"url refused at delivery: {answer.error}"
        status = "failed" if answer.refused else outcome.status
        fields: dict[str, Any] = {
            "status": status,
            "error": outcome.error,
            "first_attempt_at": first,
        }
        if status == "retry":
            fields |= {"status": "pending", "next_attempt_at": outcome.next_attempt_at}
        elif status == "delivered":
            fields["delivered_at"] = now
        record = {
            "at": started,
            "status_code": answer.status_code,
            "latency_ms": answer.latency_ms,
            "error": answer.error,
        }
        if not await self._store.save_attempt(doc["_id"], self._owner, record, fields):
            log.warning(
                "delivery lease lost before its attempt was recorded",
                extra=log_fields(delivery_id=doc["_id"], webhook_id=doc["webhook_id"]),
            )
            return
        self._metrics.attempt(status, answer.latency_ms / 1000)
        await self._after(doc, status, disable_reason, outcome.error, now)

    async def _send(self, doc: dict[str, Any], endpoint: dict[str, Any], now: datetime) -> Answer:
        try:
            check_url(endpoint["url"], self._urls)
        except UrlRefused as refused:
            return Answer(status_code=None, latency_ms=0, error=refused.message, refused=True)
        body = doc["body"].encode()
        timestamp = int(now.timestamp())
        live = [
            self._sealing.unseal(s["secret"])
            for s in endpoint.get("signing_secrets") or []
            if s.get("expires_at") is None or s["expires_at"] > now
        ]
        headers = {
            "webhook-id": doc["webhook_id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(live, doc["webhook_id"], timestamp, body),
        }
        return await self._sender.post(endpoint["url"], body, headers)

    async def _after(
        self,
        doc: dict[str, Any],
        status: str,
        disable_reason: str,
        error: str | None,
        now: datetime,
    ) -> None:
        endpoint_id = doc["endpoint_id"]
        if status == "delivered":
            await self._store.save_endpoint_success(endpoint_id)
            return
        if status != "failed":
            return
        failures = await self._store.save_endpoint_failure(endpoint_id)
        if not disable_reason and should_disable(failures, self._retry):
            disable_reason = f"{failures} deliveries in a row failed; last: {error}"
        if disable_reason and await self._store.save_endpoint_disabled(
            endpoint_id, disable_reason, now
        ):
            log.warning(
                "webhook endpoint disabled",
                extra=log_fields(endpoint_id=endpoint_id, reason=disable_reason),
            )
