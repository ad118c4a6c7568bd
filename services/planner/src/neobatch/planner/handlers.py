"""Event subscribers of the planner: translate each event into a Planner call.

Handlers are idempotent because `Planner.apply` is: a replayed event finds the job already
moved on and changes nothing.
"""

from __future__ import annotations

from faststream.nats import NatsBroker

from neobatch.common.broker import subscribe
from neobatch.common.contracts import (
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
from neobatch.planner.scheduler import Planner

SERVICE = "planner"
JOB_EVENTS = (
    JobCancelRequested,
    ProvisionRunning,
    ProvisionFailed,
    ProvisionLost,
    ProvisionReleased,
    BatchStatusReported,
    BatchTerminal,
)


def register(broker: NatsBroker, ns: Namespace, planner: Planner, worker_count: int) -> None:
    async def on_job_queued(event: JobQueued) -> None:
        # Jobs start in queue order as provisioning slots allow, not in arrival order of events.
        await planner.plan_waiting()

    async def on_job_event(event: Event) -> None:
        await planner.apply(event.job_id, event)  # type: ignore[attr-defined]  # all name their job

    subscribe(broker, ns, SERVICE, JobQueued, on_job_queued)
    for event_type in JOB_EVENTS:
        subscribe(broker, ns, SERVICE, event_type, on_job_event, max_workers=worker_count)
