"""Dead-lettering: a message that exhausted `max_deliver` is copied to `<NS>_EVENTS_DLQ`.

JetStream has no dead-letter queue of its own; it announces exhaustion with an advisory
(library-notes §2.3), a core NATS message that is lost if nobody listens at that moment. So
the advisories are captured durably first: the stream `<NS>_EVENTS_ADVISORIES` subscribes to
`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<NS>_EVENTS.*` and keeps them, and each service
reads them through its own durable consumer (a deliver group, so several instances forward
each advisory once), forwards those about its own consumers and acks every one. An advisory
raised while every instance of a service was down is forwarded when one comes back. Each
forward carries a `Nats-Msg-Id`, so a forward repeated after a crash is stored once.
"""

from __future__ import annotations

import json
import logging

import nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from neobatch.common.logs import log_fields
from neobatch.common.subjects import DUPLICATE_WINDOW_SECONDS, Namespace

log = logging.getLogger("neobatch.deadletter")

DLQ_MAX_AGE_SECONDS = 30 * 24 * 3600
# Advisories are kept until forwarded; one not read within a week had no live reader to read it.
ADVISORY_MAX_AGE_SECONDS = 7 * 24 * 3600
# A forward that failed (the events stream or the DLQ briefly away) is tried again after this.
ADVISORY_ACK_WAIT_SECONDS = 10.0


def dead_letter_subject(original_subject: str) -> str:
    return f"dlq.{original_subject}"


async def _add_or_update(nc: nats.NATS, config: StreamConfig) -> None:
    js = nc.jetstream()
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


async def ensure_dead_letter_stream(nc: nats.NATS, ns: Namespace, replicas: int = 1) -> None:
    await _add_or_update(
        nc,
        StreamConfig(
            num_replicas=replicas,
            name=ns.dead_letter_stream_name,
            subjects=[f"dlq.{ns.prefix}.>"],
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            max_age=DLQ_MAX_AGE_SECONDS,
        ),
    )


def advisory_stream_name(ns: Namespace) -> str:
    return f"{ns.stream_name}_ADVISORIES"


def max_deliveries_subject(ns: Namespace) -> str:
    """The advisories of every consumer of the events stream that exhausted `max_deliver`."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{ns.stream_name}.*"


async def ensure_advisory_stream(nc: nats.NATS, ns: Namespace, replicas: int = 1) -> None:
    await _add_or_update(
        nc,
        StreamConfig(
            num_replicas=replicas,
            name=advisory_stream_name(ns),
            subjects=[max_deliveries_subject(ns)],
            storage=StorageType.FILE,
            max_age=ADVISORY_MAX_AGE_SECONDS,
        ),
    )


async def forward_dead_letters(
    nc: nats.NATS, ns: Namespace, service: str, replicas: int = 1
) -> Subscription:
    """Start forwarding exhausted messages of `service`'s consumers; returns the subscription.

    Advisories stored while no instance of `service` ran are forwarded now, oldest first.
    """
    await ensure_dead_letter_stream(nc, ns, replicas)
    await ensure_advisory_stream(nc, ns, replicas)
    js = nc.jetstream()

    async def forward(advisory: dict[str, object]) -> None:
        consumer = str(advisory.get("consumer", ""))
        if not consumer.startswith(f"{service}-"):
            return  # another service's consumer: its own forwarder handles it
        seq = int(advisory["stream_seq"])  # type: ignore[call-overload]
        try:
            original = await js.get_msg(ns.stream_name, seq)
        except NotFoundError:
            # Aged out of the events stream before anyone forwarded it: nothing left to copy.
            log.error(
                "dead-lettered message no longer in the stream",
                extra=log_fields(consumer=consumer, stream_seq=seq),
            )
            return
        await js.publish(
            dead_letter_subject(original.subject),
            original.data or b"",
            headers={
                "Nats-Msg-Id": f"dlq-{consumer}-{seq}",
                "X-Consumer": consumer,
                "X-Deliveries": str(advisory.get("deliveries", "")),
                "X-Original-Subject": original.subject,
                "X-Stream-Seq": str(seq),
            },
        )
        log.error(
            "message dead-lettered after exhausting retries",
            extra=log_fields(consumer=consumer, subject=original.subject, stream_seq=seq),
        )

    async def on_advisory(msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
        except ValueError:
            await msg.term()  # not an advisory we can read, now or ever
            return
        try:
            await forward(advisory)
        except Exception:
            # Not acked: the advisory is delivered again after ADVISORY_ACK_WAIT_SECONDS.
            log.warning(
                "dead-letter forward failed; will retry",
                exc_info=True,
                extra=log_fields(service=service),
            )
            return
        await msg.ack()

    group = f"{service}-dlq"
    return await js.subscribe(
        max_deliveries_subject(ns),
        queue=group,
        stream=advisory_stream_name(ns),
        cb=on_advisory,
        manual_ack=True,
        config=ConsumerConfig(
            durable_name=group,
            deliver_group=group,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ADVISORY_ACK_WAIT_SECONDS,
        ),
    )
