"""Event handlers: decode → load the job → decide → save. Idempotent by construction.

A handler that loses a compare-and-set reloads and decides again; a replayed event finds
the job already moved on and `decide` returns None.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from faststream.nats import NatsBroker

from neobatch.common.broker import subscribe
from neobatch.common.clock import Clock
from neobatch.common.contracts import (
    BatchStatusReported,
    BatchTerminal,
    Event,
    JobCancelRequested,
    JobQueued,
    ProvisionFailed,
    ProvisionReleased,
    ProvisionRunning,
)
from neobatch.common.errors import NotFound
from neobatch.common.logs import log_fields
from neobatch.common.subjects import Namespace
from neobatch.planner import jobs
from neobatch.planner.store import JobStore

log = logging.getLogger("neobatch.planner")

SERVICE = "planner"
MAX_CAS_ATTEMPTS = 5
CONSUMED = (
    JobQueued,
    JobCancelRequested,
    ProvisionRunning,
    ProvisionFailed,
    ProvisionReleased,
    BatchStatusReported,
    BatchTerminal,
)


class LostRace(RuntimeError):
    """The job kept changing under us; the message is retried later."""


class JobEventHandler:
    def __init__(
        self,
        store: JobStore,
        clock: Clock,
        notify_outbox: Callable[[], None],
        provisioning_timeout_seconds: float,
    ) -> None:
        self._store = store
        self._clock = clock
        self._notify = notify_outbox
        self._timeout = provisioning_timeout_seconds

    async def handle(self, event: Event) -> None:
        job_id: str = event.job_id  # type: ignore[attr-defined]  # every consumed event names its job
        for _ in range(MAX_CAS_ATTEMPTS):
            try:
                job = await self._store.get_job(job_id)
            except NotFound:
                log.warning(
                    "event for unknown job ignored",
                    extra=log_fields(job_id=job_id, subject=event.subject),
                )
                return
            now = self._clock.now()
            decision = jobs.decide(job, event, now, provisioning_timeout_seconds=self._timeout)
            if decision is None:
                return
            if await self._store.save_decision(job, decision, now):
                if decision.events:
                    self._notify()
                if decision.status is not None:
                    log.info(
                        "job transition",
                        extra=log_fields(
                            job_id=job_id,
                            old=job.status.value,
                            new=decision.status.value,
                            reason=decision.reason,
                        ),
                    )
                return
        raise LostRace(
            f"job {job_id} changed {MAX_CAS_ATTEMPTS} times while handling {event.subject}"
        )


def register(broker: NatsBroker, ns: Namespace, handler: JobEventHandler) -> None:
    for event_type in CONSUMED:
        subscribe(broker, ns, SERVICE, event_type, handler.handle)
