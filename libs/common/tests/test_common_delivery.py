"""Delivery semantics against a real nats-server and a real Mongo-wire server.

These are the guarantees every service relies on (DESIGN rules 1 and 2): an event
published twice with one id is handled once; a failing handler is retried and then
succeeds; a state change whose publish never happened is still published by the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import nats
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.broker import create_broker, subscribe
from neobatch.common.clock import utcnow
from neobatch.common.contracts import JobQueued, encode_event
from neobatch.common.deadletter import forward_dead_letters
from neobatch.common.leases import claim_many
from neobatch.common.mongo import create_mongo_client, transact
from neobatch.common.outbox import OUTBOX, OutboxRelay, append_events
from neobatch.common.subjects import Namespace
from neobatch.sim.testing.waiting import wait_until


async def test_event_published_twice_with_one_id_is_handled_once(
    nats_url: str, ns: Namespace, connect_stream: Callable[[], Awaitable[nats.NATS]]
) -> None:
    nc = await connect_stream()
    handled: list[str] = []

    async def on_job_queued(event: JobQueued) -> None:
        handled.append(event.job_id)

    broker = create_broker(nats_url)
    subscribe(broker, ns, "test", JobQueued, on_job_queued)
    event = JobQueued(job_id="job_dup")
    marker = JobQueued(job_id="job_marker")
    async with broker:
        await broker.start()
        js = nc.jetstream()
        first = await js.publish(
            ns.subject(event), encode_event(event), headers={"Nats-Msg-Id": event.event_id}
        )
        second = await js.publish(
            ns.subject(event), encode_event(event), headers={"Nats-Msg-Id": event.event_id}
        )
        await js.publish(
            ns.subject(marker), encode_event(marker), headers={"Nats-Msg-Id": marker.event_id}
        )
        # The marker is published after the duplicate: once it is handled, so is anything before it.
        await wait_until(lambda: "job_marker" in handled, 10, message="marker handled")
    await nc.close()
    assert second.duplicate and second.seq == first.seq
    assert handled == ["job_dup", "job_marker"]


async def test_failing_handler_is_retried_with_delay_then_succeeds(
    nats_url: str, ns: Namespace, connect_stream: Callable[[], Awaitable[nats.NATS]]
) -> None:
    nc = await connect_stream()
    attempts: list[float] = []

    async def flaky(event: JobQueued) -> None:
        attempts.append(utcnow().timestamp())
        if len(attempts) < 3:
            raise RuntimeError("database briefly away")

    broker = create_broker(nats_url)
    subscribe(broker, ns, "test", JobQueued, flaky)
    event = JobQueued(job_id="job_flaky")
    async with broker:
        await broker.start()
        await nc.jetstream().publish(
            ns.subject(event), encode_event(event), headers={"Nats-Msg-Id": event.event_id}
        )
        await wait_until(lambda: len(attempts) >= 3, 15, message="third attempt")
        info = await nc.jetstream().consumer_info(ns.stream_name, ns.durable("test", JobQueued))
    await nc.close()
    assert len(attempts) == 3
    # Retries are delayed (0.5 s, then 1 s), not immediate redeliveries.
    assert attempts[1] - attempts[0] >= 0.4
    assert attempts[2] - attempts[1] >= 0.9
    assert info.config.max_deliver is not None and info.config.max_deliver > 3


async def test_relay_publishes_a_committed_change_whose_publish_never_happened(
    nats_url: str,
    mongo_url: str,
    mongo_db: AsyncDatabase,
    ns: Namespace,
    connect_stream: Callable[[], Awaitable[nats.NATS]],
) -> None:
    client = create_mongo_client(mongo_url)
    db = client.get_database(mongo_db.name)
    event = JobQueued(job_id="job_outbox")

    async def work(session) -> None:  # type: ignore[no-untyped-def]
        await db.jobs.insert_one({"_id": "job_outbox", "status": "queued"}, session=session)
        await append_events(db, ns, [event], session, utcnow())

    # The "service" commits and dies before publishing: nothing but the outbox knows.
    await transact(client, work)
    nc = await connect_stream()
    sub = await nc.jetstream().subscribe(ns.subject(event), durable=f"probe{uuid.uuid4().hex[:6]}")

    relay = OutboxRelay(db, nc)
    assert await relay.publish_pending() == 1
    message = await sub.next_msg(timeout=5)
    assert message.headers and message.headers["Nats-Msg-Id"] == event.event_id
    entry = await db[OUTBOX].find_one({"_id": event.event_id})
    assert entry is not None and entry["published_at"] is not None

    # A relay that crashed after publishing but before marking: the entry is claimed again
    # once its lease expires, re-published, and JetStream stores it only once.
    await db[OUTBOX].update_one(
        {"_id": event.event_id}, {"$set": {"published_at": None, "lease_until": None}}
    )
    assert await OutboxRelay(db, nc).publish_pending() == 1
    info = await nc.jetstream().stream_info(ns.stream_name)
    assert info.state.messages == 1
    await nc.close()
    await client.close()


async def test_rolled_back_change_leaves_no_event(
    mongo_url: str, mongo_db: AsyncDatabase, ns: Namespace
) -> None:
    client = create_mongo_client(mongo_url)
    db = client.get_database(mongo_db.name)

    async def work(session) -> None:  # type: ignore[no-untyped-def]
        await append_events(db, ns, [JobQueued(job_id="job_rollback")], session, utcnow())
        raise ValueError("handler failed after recording its event")

    with pytest.raises(ValueError):
        await transact(client, work)
    assert await db[OUTBOX].count_documents({}) == 0
    await client.close()


async def test_exhausted_message_goes_to_the_dead_letter_stream(
    nats_url: str, ns: Namespace, connect_stream: Callable[[], Awaitable[nats.NATS]]
) -> None:
    nc = await connect_stream()
    await forward_dead_letters(nc, ns, "test")
    attempts: list[int] = []

    async def always_fails(event: JobQueued) -> None:
        attempts.append(1)
        raise RuntimeError("poison")

    broker = create_broker(nats_url)
    subscribe(broker, ns, "test", JobQueued, always_fails, max_deliver=2)
    event = JobQueued(job_id="job_poison")
    dlq = await nc.jetstream().subscribe(f"dlq.{ns.prefix}.>", stream=ns.dead_letter_stream_name)
    async with broker:
        await broker.start()
        await nc.jetstream().publish(
            ns.subject(event), encode_event(event), headers={"Nats-Msg-Id": event.event_id}
        )
        dead = await dlq.next_msg(timeout=15)
    await nc.close()
    assert len(attempts) == 2
    assert dead.subject == f"dlq.{ns.subject(event)}"
    assert dead.headers and dead.headers["X-Consumer"] == ns.durable("test", JobQueued)
    assert b"job_poison" in dead.data


async def test_committed_entries_are_handed_to_the_relay_and_published_without_a_claim(
    nats_url: str,
    mongo_url: str,
    mongo_db: AsyncDatabase,
    ns: Namespace,
    connect_stream: Callable[[], Awaitable[nats.NATS]],
) -> None:
    client = create_mongo_client(mongo_url)
    db = client.get_database(mongo_db.name)
    nc = await connect_stream()
    # A long poll interval: only the hand-over can publish within the test.
    relay = OutboxRelay(db, nc, poll_interval_seconds=60)
    committed, rolled_back = JobQueued(job_id="job_fast"), JobQueued(job_id="job_rolled_back")

    async def commits(session) -> None:  # type: ignore[no-untyped-def]
        await append_events(db, ns, [committed], session, utcnow())

    async def fails(session) -> None:  # type: ignore[no-untyped-def]
        await append_events(db, ns, [rolled_back], session, utcnow())
        raise ValueError("handler failed after recording its event")

    sub = await nc.jetstream().subscribe(ns.subject(committed), durable=f"p{uuid.uuid4().hex[:6]}")
    running = asyncio.create_task(relay.run())
    await wait_until(lambda: relay.running, 5, message="relay running")
    await asyncio.sleep(0.2)  # its first sweep is over
    with pytest.raises(ValueError):
        await transact(client, fails)
    await transact(client, commits)
    relay.notify()
    message = await sub.next_msg(timeout=5)
    assert message.headers and message.headers["Nats-Msg-Id"] == committed.event_id

    async def marked() -> bool:
        entry = await db[OUTBOX].find_one({"_id": committed.event_id})
        return entry is not None and entry["published_at"] is not None

    await wait_until(marked, 5, message="entry marked sent")
    entry = await db[OUTBOX].find_one({"_id": committed.event_id})
    assert entry is not None and entry["lease_owner"] == relay.lease_owner  # never claimed
    assert await db[OUTBOX].count_documents({}) == 1  # the rolled-back one was never written
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    assert not relay.running
    await nc.close()
    await client.close()


async def test_claims_skip_live_leases_and_take_expired_ones_in_order(
    mongo_url: str, mongo_db: AsyncDatabase
) -> None:
    client = create_mongo_client(mongo_url)
    coll = client.get_database(mongo_db.name)["claims"]
    now = utcnow()
    leases = {"a": now - timedelta(seconds=1), "b": now + timedelta(seconds=30), "c": None}
    await coll.insert_many(
        [
            {"_id": key, "at": n, "pending": True, "lease_owner": "x", "lease_until": until}
            for n, (key, until) in enumerate(leases.items())
        ]
        + [{"_id": "d", "at": 3, "pending": True}, {"_id": "e", "at": 4, "pending": False}]
    )
    won = await claim_many(coll, {"pending": True}, "me", now, 10, [("at", 1)], 10)
    assert [doc["_id"] for doc in won] == ["a", "c", "d"]
    assert all(doc["lease_owner"] == "me" for doc in won)
    assert await claim_many(coll, {"pending": True}, "other", now, 10, [("at", 1)], 10) == []
    # A page full of live leases does not hide an unleased document behind it.
    await coll.insert_one({"_id": "f", "at": 5, "pending": True, "lease_until": None})
    won = await claim_many(coll, {"pending": True}, "third", now, 10, [("at", 1)], 2)
    assert [doc["_id"] for doc in won] == ["f"]
    await client.close()
