"""Dead-letter advisories survive a forwarder that was down (real nats-server).

JetStream announces an exhausted message with a core NATS advisory; the advisory stream keeps
it, so it is forwarded to the dead-letter stream once a forwarder runs again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import nats

from neobatch.common.broker import create_broker, subscribe
from neobatch.common.contracts import JobQueued, encode_event
from neobatch.common.deadletter import advisory_stream_name, forward_dead_letters
from neobatch.common.subjects import Namespace
from neobatch.sim.testing.waiting import wait_until


async def test_advisory_raised_while_no_forwarder_runs_is_forwarded_when_one_starts(
    nats_url: str, ns: Namespace, connect_stream: Callable[[], Awaitable[nats.NATS]]
) -> None:
    """The advisory is core NATS: captured by a stream, it outlives a forwarder that was down."""
    # The service ran once (its forwarder and advisory capture exist), then went down.
    first = await connect_stream()
    await forward_dead_letters(first, ns, "test")
    await first.close()

    nc = await connect_stream()
    js = nc.jetstream()
    attempts: list[int] = []

    async def always_fails(event: JobQueued) -> None:
        attempts.append(1)
        raise RuntimeError("poison")

    broker = create_broker(nats_url)
    subscribe(broker, ns, "test", JobQueued, always_fails, max_deliver=2)
    event = JobQueued(job_id="job_poison_unattended")
    async with broker:
        await broker.start()
        await js.publish(
            ns.subject(event), encode_event(event), headers={"Nats-Msg-Id": event.event_id}
        )

        async def advisory_stored() -> bool:
            return (await js.stream_info(advisory_stream_name(ns))).state.messages == 1

        await wait_until(advisory_stored, 15, message="the advisory captured")
    assert len(attempts) == 2
    assert (await js.stream_info(ns.dead_letter_stream_name)).state.messages == 0

    # Back up: the stored advisory is forwarded, once, even by two instances at the same time.
    second = await nats.connect(nats_url)
    await forward_dead_letters(nc, ns, "test")
    await forward_dead_letters(second, ns, "test")
    dlq = await js.subscribe(f"dlq.{ns.prefix}.>", stream=ns.dead_letter_stream_name)
    dead = await dlq.next_msg(timeout=15)
    assert dead.headers and dead.headers["X-Consumer"] == ns.durable("test", JobQueued)
    assert b"job_poison_unattended" in dead.data

    async def acked() -> bool:
        info = await js.consumer_info(advisory_stream_name(ns), "test-dlq")
        return info.num_ack_pending == 0 and info.num_pending == 0

    await wait_until(acked, 10, message="the advisory acked")
    assert (await js.stream_info(ns.dead_letter_stream_name)).state.messages == 1
    await second.close()
    await nc.close()
