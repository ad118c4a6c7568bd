"""FastStream broker, the JetStream stream and durable pull consumers.

Delivery contract (DESIGN rule 2, library-notes §2):
- one stream `<NS>_EVENTS` over `<ns>.>`, file storage, explicit duplicate window;
- one durable pull consumer per (service, subject), `max_deliver` bounded;
- a failing handler is nacked with a growing delay (a plain nak redelivers at once);
- FastStream's JetStream default (REJECT_ON_ERROR) would drop a failing message for good,
  so the broker runs NACK_ON_ERROR.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
from fast_depends.msgspec import MsgSpecSerializer
from faststream import AckPolicy
from faststream.exceptions import AckMessage, NackMessage, RejectMessage
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsMessage, PullSub
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError

from neobatch.common.contracts import Event
from neobatch.common.logs import log_fields
from neobatch.common.metrics import EVENTS_HANDLED, HANDLER_RETRIES
from neobatch.common.subjects import (
    ACK_WAIT_SECONDS,
    DUPLICATE_WINDOW_SECONDS,
    MAX_DELIVER,
    Namespace,
    retry_delay_seconds,
)

log = logging.getLogger("neobatch.broker")

E = TypeVar("E", bound=Event)
Handler = Callable[[E], Awaitable[None]]

STREAM_MAX_AGE_SECONDS = 7 * 24 * 3600


def stream_config(ns: Namespace, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        num_replicas=replicas,
        name=ns.stream_name,
        subjects=ns.stream_subjects,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=STREAM_MAX_AGE_SECONDS,
    )


async def ensure_stream(nc: nats.NATS, ns: Namespace, replicas: int = 1) -> None:
    """Create or update the event stream; every service calls this at start.

    `replicas` (NEOBATCH_STREAM_REPLICAS) is 3 on a 3-node JetStream cluster, 1 on one server.
    """
    js = nc.jetstream()
    config = stream_config(ns, replicas)
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


def create_broker(nats_url: str | list[str], **kwargs: Any) -> NatsBroker:
    return NatsBroker(
        nats_url,
        serializer=MsgSpecSerializer(),
        ack_policy=AckPolicy.NACK_ON_ERROR,
        # Per-message "Received/Processed" lines are debug detail, not service logs.
        log_level=logging.DEBUG,
        **kwargs,
    )


def subscribe(
    broker: NatsBroker,
    ns: Namespace,
    service: str,
    event_type: type[E],
    handler: Handler[E],
    *,
    max_deliver: int = MAX_DELIVER,
    max_workers: int = 1,
) -> None:
    """Register `handler` as the durable pull consumer of `event_type` for `service`.

    The handler gets the decoded event. It must be idempotent; when it raises, the message
    is redelivered after `retry_delay_seconds(attempt)`, at most `max_deliver` times.
    """

    handled = EVENTS_HANDLED.labels(service=service, subject=event_type.subject)
    retried = HANDLER_RETRIES.labels(service=service, subject=event_type.subject)

    async def consume(event: Any, msg: NatsMessage) -> None:
        try:
            await handler(event)
            handled.inc()
        except (AckMessage, NackMessage, RejectMessage):
            raise
        except Exception as exc:
            retried.inc()
            attempt = msg.raw_message.metadata.num_delivered or 1
            delay = retry_delay_seconds(attempt)
            log.warning(
                "handler failed; will retry",
                exc_info=True,
                extra=log_fields(
                    subject=event_type.subject,
                    service=service,
                    attempt=attempt,
                    retry_in_seconds=delay,
                    event_id=getattr(event, "event_id", None),
                ),
            )
            raise NackMessage(delay=delay) from exc

    # FastStream reads the parameter types to decode the message into the Struct.
    consume.__annotations__ = {"event": event_type, "msg": NatsMessage, "return": None}
    consume.__name__ = f"on_{event_type.subject.replace('.', '_')}"

    broker.subscriber(
        ns.subject(event_type),
        stream=JStream(ns.stream_name, declare=False),
        durable=ns.durable(service, event_type),
        pull_sub=PullSub(batch_size=1, timeout=5.0),
        config=ConsumerConfig(
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=max_deliver,
            filter_subject=ns.subject(event_type),
        ),
        max_workers=max_workers,
    )(consume)
