"""The provisioning driver: advances every unsettled provision one step at a time.

Work is found in MongoDB, not held in a message (DESIGN rule 3): a provision is claimed
under a lease, stepped (one provider call), saved with its events, and released. If this
process dies mid-step the lease expires and any instance continues from the stored state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

import msgspec

from neobatch.common.aio import wait_for_event
from neobatch.common.clock import Clock
from neobatch.common.contracts import (
    Event,
    ProvisionFailed,
    ProvisionReleased,
    ProvisionRunning,
    ProvisionStatus,
)
from neobatch.common.ids import new_id
from neobatch.common.logs import log_fields
from neobatch.resource_manager import placement, provisions
from neobatch.resource_manager.providers.base import CloudProvider, Provider, ProviderError
from neobatch.resource_manager.provisions import Provision, Step
from neobatch.resource_manager.store import ProvisionStore

log = logging.getLogger("neobatch.resource_manager")

LEASE_SECONDS = 30.0
IDLE_POLL_SECONDS = 1.0
# Provisions stepped at once (their provider calls and saves overlap).
BATCH = 32
# A handed-over provision is stepped as `fresh` only while its lease has this much left: a
# lease that ran out may have been claimed (and stepped) by another driver meanwhile.
FRESH_MARGIN_SECONDS = 10.0


class ProvisionDriver:
    def __init__(
        self,
        store: ProvisionStore,
        providers: dict[str, Provider],
        clock: Clock,
        notify_outbox: Callable[[], None],
        *,
        clouds: Mapping[str, CloudProvider] | None = None,
        cloud_order: Sequence[str] = (),
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._store = store
        self._providers = providers
        # Cloud providers (runpod, lambdaCloud) are stepped by placement.py, with failover
        # across offers and, in `cloud_order`, across providers.
        self._clouds = dict(clouds or {})
        self._cloud_order = tuple(cloud_order)
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._notify = notify_outbox
        self._owner = new_id("driver")
        self._wakeup = asyncio.Event()
        # Provisions the handlers recorded (or moved to releasing) already leased to this
        # driver: stepped without a claim, in arrival order.
        self._handed: dict[str, Provision] = {}
        self._last_claim = float("-inf")
        # Saves waiting for the next transaction (group commit), and whether one is running.
        self._saves: list[tuple[Provision, Step, list[Event], float, asyncio.Future[bool]]] = []
        self._saving = False

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def lease_seconds(self) -> float:
        return self._lease_seconds

    def wake(self) -> None:
        self._wakeup.set()

    def hand_over(self, provision: Provision) -> None:
        """A provision leased to this driver (`owner`) in the write that recorded its state."""
        self._handed[provision.id] = provision
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            self._wakeup.clear()
            while await self.step_batch():
                pass
            with contextlib.suppress(TimeoutError):
                await wait_for_event(self._wakeup, IDLE_POLL_SECONDS)

    async def step_batch(self) -> bool:
        """Advance up to BATCH provisions at once: handed-over ones, then claimed due ones.

        While handed-over work flows, due provisions are claimed at most every
        IDLE_POLL_SECONDS (their retries are that coarse anyway); otherwise every pass claims.
        False when nothing was due.
        """
        ids = list(self._handed)[:BATCH]
        batch = [self._handed.pop(i) for i in ids]
        loop_now = asyncio.get_running_loop().time()
        if len(batch) < BATCH and (not batch or loop_now - self._last_claim >= IDLE_POLL_SECONDS):
            self._last_claim = loop_now
            claimed = await self._store.claim_due(
                new_id("claim"), self._clock.now(), self._lease_seconds, BATCH - len(batch)
            )
            taken = {p.id for p in batch}
            for provision in claimed:
                # Claimed afresh (a lease that ran out): the stored copy wins over a handed one.
                self._handed.pop(provision.id, None)
                if provision.id in taken:
                    batch = [p for p in batch if p.id != provision.id]
                batch.append(provision)
        if not batch:
            return False
        now = self._clock.now()
        for n, provision in enumerate(batch):
            if provision.fresh and (
                provision.lease_until is None
                or (provision.lease_until - now).total_seconds() < FRESH_MARGIN_SECONDS
            ):
                batch[n] = msgspec.structs.replace(provision, fresh=False)
        results = await asyncio.gather(*(self._advance(p) for p in batch), return_exceptions=True)
        for provision, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                # Its lease runs out and the step is tried again (by any driver).
                log.error(
                    "provision step failed",
                    exc_info=result,
                    extra=log_fields(provision_id=provision.id),
                )
        return True

    async def step_next(self) -> bool:
        """Claim and advance one provision; False when none is due."""
        if self._handed:
            provision = self._handed.pop(next(iter(self._handed)))
        else:
            provision = await self._store.claim_next(
                self._owner, self._clock.now(), self._lease_seconds
            )
        if provision is None:
            return False
        await self._advance(provision)
        return True

    async def _advance(self, provision: Provision) -> None:
        if provision.status not in provisions.ACTIVE:
            return  # settled meanwhile: nothing to do (the stored copy says so)
        provider = self._providers.get(provision.provider)
        if provision.provider in self._clouds:
            step = await self._cloud_step(provision)
        elif provider is None:
            step = provisions.unknown_provider_step(provision, tuple(self._providers))
        elif provision.status is ProvisionStatus.RELEASING:
            step = await self._release_step(provider, provision)
        else:
            step = await self._start_step(provider, provision)
        events = self._events_for(provision, step)
        retry = provisions.RETRY_SECONDS if step.retry_seconds is None else step.retry_seconds
        if await self._save(provision, step, events, retry):
            if events:
                self._notify()
            if step.status is not provision.status:
                log.info(
                    "provision transition",
                    extra=log_fields(
                        provision_id=provision.id,
                        old=provision.status.value,
                        new=step.status.value,
                        error=step.error_message,
                    ),
                )

    async def _save(
        self, provision: Provision, step: Step, events: list[Event], retry: float
    ) -> bool:
        """Save a step with its events; steps saved meanwhile share one transaction.

        While a transaction is being written, the saves that arrive wait and go together in
        the next one: a burst costs three round trips per batch, not per provision.
        """
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._saves.append((provision, step, events, retry, done))
        if not self._saving:
            self._saving = True
            try:
                while self._saves:
                    await asyncio.sleep(0)  # steps finishing now join this transaction
                    batch, self._saves = self._saves, []
                    try:
                        won = await self._store.save_steps(
                            [(p, s, e, r) for p, s, e, r, _ in batch], self._clock.now()
                        )
                    except Exception as error:
                        for *_, future in batch:
                            if not future.done():
                                future.set_exception(error)
                        continue
                    for (*_, future), result in zip(batch, won, strict=True):
                        if not future.done():
                            future.set_result(result)
            finally:
                self._saving = False
        return await done

    async def _cloud_step(self, provision: Provision) -> Step:
        if provision.status is ProvisionStatus.RELEASING:
            return await placement.release_step(self._clouds, provision)
        now = self._clock.now()
        if provisions.is_past_deadline(provision, now):
            step = provisions.deadline_step(provision)
            step.provider_resource_id = provision.provider_resource_id
            return step
        return await placement.start_step(self._clouds, self._cloud_order, provision, now)

    async def _start_step(self, provider: Provider, provision: Provision) -> Step:
        now = self._clock.now()
        if provisions.is_past_deadline(provision, now):
            return provisions.deadline_step(provision)
        try:
            if provision.provider_resource_id is None:
                if provision.fresh and getattr(provider, "accepts_fresh", False):
                    machine = await provider.provision(  # type: ignore[call-arg]
                        provision.id, provision.resource_name, provision.request, fresh=True
                    )
                else:
                    machine = await provider.provision(
                        provision.id, provision.resource_name, provision.request
                    )
            else:
                machine = await provider.get(provision.id, provision.provider_resource_id)
        except ProviderError as error:
            return provisions.after_error(provision, error, now)
        return provisions.after_machine(provision, machine)

    async def _release_step(self, provider: Provider, provision: Provision) -> Step:
        await provider.release(provision.id, provision.provider_resource_id)
        if getattr(provider, "release_is_confirmed", False):
            return Step(status=ProvisionStatus.RELEASED)  # the release call itself confirmed it
        if provision.provider_resource_id is not None:
            machine = await provider.get(provision.id, provision.provider_resource_id)
            if not machine.gone:
                return Step(status=ProvisionStatus.RELEASING)
        return Step(status=ProvisionStatus.RELEASED)

    def _events_for(self, provision: Provision, step: Step) -> list[Event]:
        if step.status is provision.status:
            return []
        if step.status is ProvisionStatus.RUNNING and step.machine and step.machine.endpoint:
            return [
                ProvisionRunning(
                    provision_id=provision.id,
                    job_id=provision.job_id,
                    provider=provision.provider,
                    endpoint=step.machine.endpoint,
                )
            ]
        if step.status is ProvisionStatus.FAILED:
            return [
                ProvisionFailed(
                    provision_id=provision.id,
                    job_id=provision.job_id,
                    code=step.error_code,
                    reason=step.error_message,
                )
            ]
        if step.status is ProvisionStatus.RELEASED:
            return [ProvisionReleased(provision_id=provision.id, job_id=provision.job_id)]
        return []
