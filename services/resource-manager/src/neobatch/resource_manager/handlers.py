"""Event subscribers of the resource-manager: record the intent each event states.

They make no provider call (the driver does): a request is recorded before anything is made
(DESIGN rule 5), a release marks the provision releasing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from faststream.nats import NatsBroker

from neobatch.common.broker import subscribe
from neobatch.common.clock import Clock
from neobatch.common.contracts import (
    BatchTerminal,
    ProvisionReleaseRequested,
    ProvisionRequested,
)
from neobatch.common.errors import Conflict
from neobatch.common.ids import resource_name
from neobatch.common.logs import log_fields
from neobatch.common.subjects import Namespace
from neobatch.common.throughput_store import ThroughputStore
from neobatch.resource_manager import provisions
from neobatch.resource_manager.driver import ProvisionDriver
from neobatch.resource_manager.ranking import sample_of
from neobatch.resource_manager.store import ProvisionStore

log = logging.getLogger("neobatch.resource_manager")

SERVICE = "resource-manager"
# Reads and compare-and-sets a release tries before the event is left for redelivery.
RELEASE_ATTEMPTS = 5


class ProvisionEventHandler:
    def __init__(
        self,
        store: ProvisionStore,
        clock: Clock,
        provisioners: tuple[str, ...],
        wake_driver: Callable[[], None],
        notify_outbox: Callable[[], None],
        *,
        driver: ProvisionDriver | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._provisioners = provisioners
        self._wake = wake_driver
        self._notify = notify_outbox
        # This process's driver: what a handler records is leased to it in the same write and
        # handed over in memory, so the driver steps it without claiming it first.
        self._driver = driver

    def _lease(self, now: datetime) -> tuple[str | None, datetime | None]:
        if self._driver is None:
            return None, None
        return self._driver.owner, now + timedelta(seconds=self._driver.lease_seconds)

    async def on_provision_requested(self, event: ProvisionRequested) -> None:
        provider = provisions.provider_for(event.resource, self._provisioners)
        now = self._clock.now()
        lease_owner, lease_until = self._lease(now)
        recorded = await self._store.insert_requested(
            provision_id=event.provision_id,
            job_id=event.job_id,
            provider=provider,
            resource_name=resource_name(event.provision_id),
            request=event.resource,
            deadline_at=event.deadline_at,
            now=now,
            lease_owner=lease_owner,
            lease_until=lease_until,
        )
        if recorded is not None and self._driver is not None:
            self._driver.hand_over(recorded)
        if recorded is not None:
            log.info(
                "provision requested",
                extra=log_fields(
                    provision_id=event.provision_id, job_id=event.job_id, provider=provider
                ),
            )
        self._wake()

    async def on_provision_release_requested(self, event: ProvisionReleaseRequested) -> None:
        now = self._clock.now()
        provision = await self._store.find_provision(event.provision_id)
        if provision is None:
            events = provisions.release_of_unknown(event.provision_id, event.job_id, now)
            if await self._store.insert_released_tombstone(
                event.provision_id, event.job_id, events, now
            ):
                self._notify()
            return
        lease_owner, lease_until = self._lease(now)
        # The write is a compare-and-set on the version read, and the driver may move the
        # provision meanwhile (requested -> running as the machine comes up). A lost race is
        # read again, not dropped: a dropped release leaves a leased machine nobody ends.
        for _ in range(RELEASE_ATTEMPTS):
            if provision.status not in provisions.RELEASABLE:
                return  # already releasing or released: nothing left to ask for
            releasing = await self._store.request_release(
                provision, event.reason, now, lease_owner, lease_until
            )
            if releasing is not None:
                log.info(
                    "release requested",
                    extra=log_fields(provision_id=provision.id, reason=event.reason),
                )
                if self._driver is not None and releasing.lease_until is not None:
                    self._driver.hand_over(releasing)
                self._wake()
                return
            reread = await self._store.find_provision(event.provision_id)
            if reread is None:
                return
            provision = reread
        # Still contended: raised, so the event is redelivered and tried again later.
        raise Conflict(f"provision {event.provision_id} kept changing while being released")


class ThroughputLearner:
    """`batch.terminal` → one throughput sample for the (template, GPU family) it ran on."""

    def __init__(
        self, provisions_store: ProvisionStore, samples: ThroughputStore, clock: Clock
    ) -> None:
        self._provisions = provisions_store
        self._samples = samples
        self._clock = clock

    async def on_batch_terminal(self, event: BatchTerminal) -> None:
        provision = await self._provisions.find_ran_job(event.job_id)
        if provision is None:
            return  # never ran on an offer (ssh pool, failed before running)
        sample = sample_of(
            event.batch_id,
            provision.request.template_key,
            provision.offer,
            event.usage.output_tokens,
            event.dispatch_seconds,
            requests=event.request_counts.completed,
        )
        if sample is not None and await self._samples.save_sample(sample, self._clock.now()):
            log.info(
                "throughput learned",
                extra=log_fields(
                    job_id=event.job_id,
                    family=sample.family,
                    tokens_per_second=round(sample.output_tokens / sample.dispatch_seconds, 1),
                ),
            )


def register(
    broker: NatsBroker,
    ns: Namespace,
    handler: ProvisionEventHandler,
    learner: ThroughputLearner | None = None,
) -> None:
    subscribe(broker, ns, SERVICE, ProvisionRequested, handler.on_provision_requested)
    subscribe(
        broker, ns, SERVICE, ProvisionReleaseRequested, handler.on_provision_release_requested
    )
    if learner is not None:
        subscribe(broker, ns, SERVICE, BatchTerminal, learner.on_batch_terminal)
