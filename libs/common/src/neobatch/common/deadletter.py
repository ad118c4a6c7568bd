"""Dead-lettering: a message that exhausted `max_deliver` is copied to `<NS>_EVENTS_DLQ`.

JetStream has no dead-letter queue of its own; it announces exhaustion with an advisory
(library-notes §2.3). Each service forwards the advisories of its own consumers, in a queue
group so several instances forward each message once, with a `Nats-Msg-Id` so a forward
repeated after a crash is stored once.
"""

from __future__ import annotations

import json
import logging

import nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError

from neobatch.common.logs import log_fields
from neobatch.common.subjects import DUPLICATE_WINDOW_SECONDS, Namespace

log = logging.getLogger("neobatch.deadletter")

DLQ_MAX_AGE_SECONDS = 30 * 24 * 3600


def dead_letter_subject(original_subject: str) -> str:
    return f"dlq.{original_subject}"


async def ensure_dead_letter_stream(nc: nats.NATS, ns: Namespace, replicas: int = 1) -> None:
    config = StreamConfig(
        num_replicas=replicas,
        name=ns.dead_letter_stream_name,
        subjects=[f"dlq.{ns.prefix}.>"],
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=DLQ_MAX_AGE_SECONDS,
    )
    js = nc.jetstream()
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


async def forward_dead_letters(
    nc: nats.NATS, ns: Namespace, service: str, replicas: int = 1
) -> Subscription:
    """Start forwarding exhausted messages of `service`'s consumers; returns the subscription."""
    await ensure_dead_letter_stream(nc, ns, replicas)
    js = nc.jetstream()

    async def on_advisory(msg: Msg) -> None:
        advisory = json.loads(msg.data)
        consumer = advisory.get("consumer", "")
        if not consumer.startswith(f"{service}-"):
            return
        seq = advisory["stream_seq"]
        original = await js.get_msg(ns.stream_name, seq)
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

    return await nc.subscribe(
        f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{ns.stream_name}.*",
        queue=f"{service}-dlq",
        cb=on_advisory,
    )
