"""Event subscribers of the planner: translate each event into a Planner call.

Handlers are idempotent because `Planner.apply` is: a replayed event finds the job already
moved on and changes nothing.
"""

from __future__ import annotations

from typing import Any

from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub

from neobatch.common.broker import subscribe
from neobatch.common.contracts import (
    BatchMachineDone,
    BatchMachineWanted,
    BatchStatusReported,
    BatchTerminal,
    Event,
    JobCancelRequested,
    JobQueued,
    ProvisionFailed,
    ProvisionLost,
    ProvisionReleased,
    ProvisionRunning,
)
from neobatch.common.subjects import Namespace
from neobatch.planner.jobs import DeadLettered
from neobatch.planner.scheduler import Planner

SERVICE = "planner"
JOB_EVENTS = (
    JobCancelRequested,
    ProvisionRunning,
    ProvisionFailed,
    ProvisionLost,
    ProvisionReleased,
    BatchStatusReported,
    BatchMachineDone,
    BatchMachineWanted,
    BatchTerminal,
)


def register(broker: NatsBroker, ns: Namespace, planner: Planner, worker_count: int) -> None:
    async def on_job_queued(event: JobQueued) -> None:
        # Jobs start in queue order as provisioning slots allow, not in arrival order of events.
        await planner.plan_waiting()

    async def on_job_event(event: Event) -> None:
        await planner.apply(event.job_id, event)  # type: ignore[attr-defined]  # all name their job

    async def on_dead_letter(body: dict[str, Any], msg: NatsMessage) -> None:
        # Only our own consumers' messages; the others' owners handle theirs.
        consumer = (msg.headers or {}).get("X-Consumer", "")
        job_id = body.get("job_id") if isinstance(body, dict) else None
        if consumer.startswith(f"{SERVICE}-") and isinstance(job_id, str):
            subject = (msg.headers or {}).get("X-Original-Subject", msg.raw_message.subject)
            await planner.apply(job_id, DeadLettered(job_id, subject.removeprefix(f"{ns.prefix}.")))

    subscribe(broker, ns, SERVICE, JobQueued, on_job_queued)
    for event_type in JOB_EVENTS:
        subscribe(broker, ns, SERVICE, event_type, on_job_event, max_workers=worker_count)
    broker.subscriber(
        f"dlq.{ns.prefix}.>",
        stream=JStream(ns.dead_letter_stream_name, declare=False),
        durable=f"{SERVICE}-dead-letters",
        pull_sub=PullSub(batch_size=1, timeout=5.0),
    )(on_dead_letter)
