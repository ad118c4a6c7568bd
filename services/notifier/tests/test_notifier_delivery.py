"""The notifier against a real Mongo-wire server and a local receiver (issue 17): the `openai`
SDK verifies what it sends; retries keep one webhook-id and back off; per-batch order; URLs
that reach inside the network are refused at delivery; a failing endpoint gets disabled."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import openai
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.clock import SystemClock, utcnow
from neobatch.common.contracts import JobStatusChanged
from neobatch.common.ids import new_id
from neobatch.common.mongo import create_mongo_client
from neobatch.common.sealing import SealingKey
from neobatch.common.webhooks import UrlPolicy, new_signing_secret
from neobatch.notifier.delivery import Deliverer
from neobatch.notifier.handlers import Fanout
from neobatch.notifier.metrics import NotifierMetrics
from neobatch.notifier.policy import RetryPolicy
from neobatch.notifier.sender import Sender
from neobatch.notifier.store import DeliveryStore
from neobatch.sim.testing.waiting import wait_until
from neobatch.sim.testing.webhook_receiver import Reply, WebhookReceiver, webhook_receiver

SEALING = SealingKey(key=base64.b64encode(bytes(range(32))).decode())
LOCAL = UrlPolicy(allow_http=True, allowed_networks=("127.0.0.0/8", "::1/128"))
GAP_WAIT = 1.5
BATCH_TYPES = ["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]


class Rig:
    def __init__(
        self, db: AsyncDatabase[Any], urls: UrlPolicy, retry: RetryPolicy, order_wait: float
    ) -> None:
        self.db = db
        self.store = DeliveryStore(db)
        self.metrics = NotifierMetrics(CollectorRegistry())
        self.sender = Sender(urls, timeout_seconds=0.5, max_response_bytes=1024, limit=4)
        self.deliverer = Deliverer(
            self.store,
            self.sender,
            SystemClock(),
            urls=urls,
            sealing=SEALING,
            retry=retry,
            lease_seconds=5,
            poll_seconds=0.05,
            metrics=self.metrics,
            order_wait_seconds=order_wait,
        )
        self.fanout = Fanout(self.store, SystemClock(), self.deliverer.wake)

    async def job(self, project: str = "p1") -> tuple[str, str]:
        job_id, batch_id = new_id("job"), new_id("batch")
        await self.db.jobs.insert_one({"_id": job_id, "project": project, "batch_id": batch_id})
        return job_id, batch_id

    async def endpoint(
        self, url: str, types: list[str], *, project: str = "p1", secrets: Any = None
    ) -> tuple[str, str]:
        secret = new_signing_secret()
        endpoint_id = new_id("we")
        await self.db.webhook_endpoints.insert_one(
            {
                "_id": endpoint_id,
                "project": project,
                "url": url,
                "event_types": types,
                "status": "enabled",
                "consecutive_failures": 0,
                "signing_secrets": secrets
                or [{"secret": SEALING.seal(secret), "created_at": utcnow(), "expires_at": None}],
            }
        )
        return endpoint_id, secret

    async def emit(self, job_id: str, new: str, old: str = "in_progress", **kw: Any) -> str:
        event = JobStatusChanged(job_id=job_id, old_status=old, new_status=new, **kw)
        await self.fanout.on_status_changed(event)
        return event.event_id

    async def deliveries(self, **query: Any) -> list[dict[str, Any]]:
        return await self.db.webhook_deliveries.find(query).sort("event_at").to_list(None)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as r:
        yield r


async def _rig(
    mongo_url: str,
    test_db: AsyncDatabase[Any],
    urls: UrlPolicy,
    retry: RetryPolicy,
    order_wait: float = 30.0,
) -> AsyncIterator[Rig]:
    client = create_mongo_client(mongo_url)  # tz-aware, as the service's
    rig = Rig(client[test_db.name], urls, retry, order_wait)
    await rig.store.ensure_indexes()
    workers = [asyncio.create_task(rig.deliverer.run_worker()) for _ in range(2)]
    try:
        yield rig
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await rig.sender.close()
        await client.close()


@pytest_asyncio.fixture
async def rig(mongo_url: str, mongo_db: AsyncDatabase[Any]) -> AsyncIterator[Rig]:
    async for r in _rig(
        mongo_url, mongo_db, LOCAL, RetryPolicy(base_seconds=0.2, window_seconds=60)
    ):
        yield r


@pytest_asyncio.fixture
async def gap_rig(mongo_url: str, mongo_db: AsyncDatabase[Any]) -> AsyncIterator[Rig]:
    """A short wait for a missing predecessor (NEOBATCH_WEBHOOK_ORDER_WAIT_SECONDS)."""
    async for r in _rig(
        mongo_url, mongo_db, LOCAL, RetryPolicy(base_seconds=0.2), order_wait=GAP_WAIT
    ):
        yield r


@pytest_asyncio.fixture
async def strict_rig(mongo_url: str, mongo_db: AsyncDatabase[Any]) -> AsyncIterator[Rig]:
    """Production's URL policy, but http allowed (the receiver is plain http)."""
    async for r in _rig(
        mongo_url, mongo_db, UrlPolicy(allow_http=True), RetryPolicy(base_seconds=0.2)
    ):
        yield r


async def test_the_openai_sdk_unwraps_each_batch_event(
    rig: Rig, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secret = await rig.endpoint(receiver.url, BATCH_TYPES)
    batches = {}
    for status, kind in [
        ("completed", "batch.completed"),
        ("failed", "batch.failed"),
        ("expired", "batch.expired"),
        ("cancelled", "batch.cancelled"),
    ]:
        job_id, batch_id = await rig.job()
        await rig.emit(job_id, status)
        batches[kind] = batch_id
    await wait_until(lambda: len(receiver.snapshot()) == 4, 10, message="four webhooks")

    client = openai.OpenAI(api_key="unused", webhook_secret=secret)
    seen = {}
    for got in receiver.snapshot():
        event = client.webhooks.unwrap(got.body, got.headers)
        assert event.object == "event" and event.id.startswith("evt_")
        seen[event.type] = event.data.id
    assert seen == batches

    got = receiver.snapshot()[0]
    tampered = got.body.replace(b'"batch_', b'"batch_x')
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(tampered, got.headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(got.body, got.headers, secret=new_signing_secret())
    later = time.time() + 301  # the same delivery replayed past the SDK's 300 s tolerance
    monkeypatch.setattr("openai.lib._webhooks.time.time", lambda: later)
    with pytest.raises(openai.InvalidWebhookSignatureError, match="too old"):
        client.webhooks.unwrap(got.body, got.headers)


async def test_job_status_changed_only_to_endpoints_that_chose_it(
    rig: Rig, receiver: WebhookReceiver
) -> None:
    await rig.endpoint(receiver.url, ["job.status_changed"])
    await rig.endpoint(receiver.url, ["batch.completed"], project="other")
    job_id, batch_id = await rig.job()
    event = JobStatusChanged(job_id=job_id, old_status="batch_created", new_status="in_progress")
    await rig.fanout.on_status_changed(event)
    await rig.fanout.on_status_changed(event)  # a replay adds nothing
    await wait_until(lambda: len(receiver.snapshot()) == 1, 10)
    await asyncio.sleep(0.3)  # a second (wrong) webhook would have arrived by now
    bodies = [r.body for r in receiver.snapshot()]
    assert len(bodies) == 1 and b'"type":"job.status_changed"' in bodies[0]
    assert f'"batch_id":"{batch_id}"'.encode() in bodies[0]


async def test_rotation_signs_with_old_and_new_secret(rig: Rig, receiver: WebhookReceiver) -> None:
    old, new, gone = new_signing_secret(), new_signing_secret(), new_signing_secret()
    now = utcnow()
    secrets = [
        {"secret": new, "created_at": now, "expires_at": None},
        {"secret": old, "created_at": now, "expires_at": now + timedelta(hours=24)},
        {"secret": gone, "created_at": now, "expires_at": now - timedelta(seconds=1)},
    ]
    await rig.endpoint(receiver.url, ["batch.completed"], secrets=secrets)
    job_id, _ = await rig.job()
    await rig.emit(job_id, "completed")
    await wait_until(lambda: receiver.snapshot(), 10)
    got = receiver.snapshot()[0]
    assert len(got.headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        openai.OpenAI(api_key="x").webhooks.unwrap(got.body, got.headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="x").webhooks.unwrap(got.body, got.headers, secret=gone)


async def test_retries_keep_one_webhook_id_and_back_off(
    rig: Rig, receiver: WebhookReceiver
) -> None:
    receiver.script = [
        Reply(500),
        Reply(429, headers={"Retry-After": "2"}),
        Reply(hang_seconds=1.0),  # past the 0.5 s timeout
        Reply(200),
    ]
    endpoint_id, secret = await rig.endpoint(receiver.url, ["batch.completed"])
    job_id, _ = await rig.job()
    await rig.emit(job_id, "completed")

    async def delivered() -> bool:
        docs = await rig.deliveries(endpoint_id=endpoint_id)
        return docs[0]["status"] == "delivered"

    await wait_until(delivered, 20, message="delivered after three failures")
    # In arrival order: the hung request is recorded when it answers, after the next one.
    got = sorted(receiver.snapshot(), key=lambda r: r.at)
    assert [r.answered for r in got] == [500, 429, 200, 200]  # the hang's 200 came too late
    assert len({r.headers["webhook-id"] for r in got}) == 1
    for r in got:
        openai.OpenAI(api_key="x").webhooks.unwrap(r.body, r.headers, secret=secret)
    (doc,) = await rig.deliveries(endpoint_id=endpoint_id)
    assert doc["attempt_count"] == 4
    assert [a["status_code"] for a in doc["attempts"]] == [500, 429, None, 200]
    assert doc["attempts"][2]["error"] == "timed out"
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    print("gaps between attempts (s):", [round(g, 2) for g in gaps])
    assert gaps[0] >= 0.1  # backoff 0.2 s x [0.5, 1)
    assert gaps[1] >= 1.9  # Retry-After: 2 honoured over a 0.4 s backoff
    assert gaps[2] >= 0.9  # the 0.5 s timeout, then a backoff of 0.8 s x [0.5, 1)
    assert rig.metrics.deliveries.labels(outcome="delivered")._value.get() == 1


async def test_per_batch_order_holds_behind_a_retried_delivery(
    rig: Rig, receiver: WebhookReceiver
) -> None:
    receiver.script = [Reply(503), Reply(503)]
    await rig.endpoint(receiver.url, ["job.status_changed"])
    job_id, _ = await rig.job()
    base = utcnow()
    statuses = ["in_progress", "finalizing", "completed"]
    for i, status in enumerate(statuses):
        await rig.emit(job_id, status, occurred_at=base + timedelta(milliseconds=i))
    await wait_until(lambda: sum(r.answered == 200 for r in receiver.snapshot()) == 3, 20)
    ok = [r.body for r in receiver.snapshot() if r.answered == 200]
    order = [next(s for s in statuses if f'"new_status":"{s}"'.encode() in b) for b in ok]
    assert order == statuses


def _versions(receiver: WebhookReceiver) -> list[int]:
    return [
        int(r.body.split(b'"job_version":')[1].split(b"}")[0].split(b",")[0])
        for r in receiver.snapshot()
        if r.answered == 200
    ]


async def test_a_late_redelivered_version_is_sent_before_its_successor(
    rig: Rig, receiver: WebhookReceiver
) -> None:
    """Version 3 is taken in first (version 2's first intake failed; JetStream redelivers it
    later): the receiver still sees 1, 2, 3."""
    await rig.endpoint(receiver.url, ["job.status_changed"])
    job_id, _ = await rig.job()
    base = utcnow()
    await rig.emit(job_id, "queued", old=None, job_version=1, occurred_at=base)
    await wait_until(lambda: len(_versions(receiver)) == 1, 10)
    await rig.emit(
        job_id,
        "submitting",
        old="resource_preparing",
        job_version=3,
        occurred_at=base + timedelta(milliseconds=2),
    )
    await asyncio.sleep(0.5)  # the redelivery comes later; v3 must not go out meanwhile
    await rig.emit(
        job_id,
        "resource_preparing",
        old="queued",
        job_version=2,
        occurred_at=base + timedelta(milliseconds=1),
    )
    await wait_until(lambda: len(_versions(receiver)) == 3, 20)
    assert _versions(receiver) == [1, 2, 3]


async def test_a_missing_version_is_waited_for_at_most_the_bound(
    gap_rig: Rig, receiver: WebhookReceiver
) -> None:
    """Version 2 never arrives: version 3 waits for it about NEOBATCH_WEBHOOK_ORDER_WAIT_SECONDS,
    then goes out anyway (a gap never blocks delivery)."""
    await gap_rig.endpoint(receiver.url, ["job.status_changed"])
    job_id, _ = await gap_rig.job()
    await gap_rig.emit(job_id, "queued", old=None, job_version=1)
    await wait_until(lambda: len(_versions(receiver)) == 1, 10)
    started = time.monotonic()
    await gap_rig.emit(job_id, "submitting", old="resource_preparing", job_version=3)
    await wait_until(lambda: len(_versions(receiver)) == 2, GAP_WAIT + 10)
    waited = time.monotonic() - started
    assert _versions(receiver) == [1, 3]
    assert waited >= GAP_WAIT - 0.1


async def test_a_version_gap_of_progress_updates_is_not_waited_for(
    rig: Rig, receiver: WebhookReceiver
) -> None:
    """Versions grow with progress updates too: version 5 whose `old_status` is version 1's
    `new_status` follows it directly (no 30 s wait)."""
    await rig.endpoint(receiver.url, ["job.status_changed"])
    job_id, _ = await rig.job()
    await rig.emit(job_id, "queued", old=None, job_version=1)
    await rig.emit(job_id, "resource_preparing", old="queued", job_version=5)
    await wait_until(lambda: len(_versions(receiver)) == 2, 10)
    assert _versions(receiver) == [1, 5]


async def test_a_redirect_is_not_followed(rig: Rig, receiver: WebhookReceiver) -> None:
    receiver.script = [Reply(302, headers={"Location": "http://10.0.0.1/steal"})]
    endpoint_id, _ = await rig.endpoint(receiver.url, ["batch.completed"])
    job_id, _ = await rig.job()
    await rig.emit(job_id, "completed")

    async def ended() -> list[dict[str, Any]]:
        return await rig.deliveries(endpoint_id=endpoint_id, status="failed")

    (doc,) = await wait_until(ended, 10)
    assert doc["error"] == "redirect (302) not followed"
    assert len(receiver.snapshot()) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/hook",
        "http://127.0.0.1:9/hook",
        "http://localhost:{port}/hook",  # a name that resolves to loopback
    ],
)
async def test_forbidden_addresses_are_refused_at_delivery(
    strict_rig: Rig, receiver: WebhookReceiver, url: str
) -> None:
    """Stored without the console's check (or a name that resolved elsewhere then): the notifier
    refuses before connecting, fails the delivery and disables the endpoint with the reason."""
    port = receiver.url.split(":")[2].split("/")[0]
    endpoint_id, _ = await strict_rig.endpoint(url.format(port=port), ["batch.completed"])
    job_id, _ = await strict_rig.job()
    await strict_rig.emit(job_id, "completed")

    async def ended() -> list[dict[str, Any]]:
        return await strict_rig.deliveries(endpoint_id=endpoint_id, status="failed")

    async def disabled() -> dict[str, Any] | None:
        return await strict_rig.db.webhook_endpoints.find_one(
            {"_id": endpoint_id, "status": "disabled"}
        )

    endpoint = await wait_until(disabled, 10)
    (doc,) = await ended()
    assert "address" in doc["error"], doc["error"]
    assert endpoint["disabled_reason"].startswith("url refused at delivery")
    assert receiver.snapshot() == []


async def test_an_endpoint_that_keeps_failing_is_disabled(
    rig: Rig, receiver: WebhookReceiver
) -> None:
    receiver.default = Reply(404)
    endpoint_id, _ = await rig.endpoint(receiver.url, ["batch.completed"])
    for _ in range(6):
        job_id, _ = await rig.job()
        await rig.emit(job_id, "completed")

    async def disabled() -> dict[str, Any] | None:
        doc = await rig.db.webhook_endpoints.find_one({"_id": endpoint_id})
        return doc if doc["status"] == "disabled" else None

    doc = await wait_until(disabled, 15)
    # Two workers count concurrently: the one that disables may have counted the sixth.
    count, _, rest = doc["disabled_reason"].partition(" ")
    assert int(count) >= 5 and rest == "deliveries in a row failed; last: HTTP 404"

    async def settled() -> bool:
        return await rig.db.webhook_deliveries.count_documents({"status": "pending"}) == 0

    await wait_until(settled, 10)
    statuses = sorted(d["status"] for d in await rig.deliveries(endpoint_id=endpoint_id))
    assert statuses.count("failed") >= 5 and set(statuses) <= {"failed", "cancelled"}
