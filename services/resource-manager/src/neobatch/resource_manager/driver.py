"""The provisioning driver: advances every unsettled provision one step at a time.

Work is found in MongoDB, not held in a message (DESIGN rule 3): a provision is claimed
under a lease, stepped (steps.py: one provider call, then the decision), saved with its
events, and released. If this process dies mid-step the lease expires and any instance
continues from the stored state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

import msgspec

from neobatch.common.aio import wait_for_event
from neobatch.common.clock import Clock
from neobatch.common.ids import new_id
from neobatch.common.logs import log_fields
from neobatch.resource_manager import provisions
from neobatch.resource_manager.providers.base import Provider
from neobatch.resource_manager.provisions import Decision, Provision
from neobatch.resource_manager.steps import Learned, step
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
        providers: Mapping[str, Provider],
        clock: Clock,
        notify_outbox: Callable[[], None],
        *,
        offer_order: Sequence[str] = (),
        lease_seconds: float = LEASE_SECONDS,
        learned: Learned | None = None,
    ) -> None:
        self._store = store
        # Throughput learned from finished batches, for ranking offers by cost per job.
        self._learned = learned
        self._providers = dict(providers)
        # Providers that rent by offer are failed over in this order (a job naming none).
        self._offer_order = tuple(offer_order)
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
        self._saves: list[tuple[Provision, Decision, asyncio.Future[bool]]] = []
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

    async def _advance(self, provision: Provision) -> None:
        if provision.status not in provisions.ACTIVE:
            return  # settled meanwhile: nothing to do (the stored copy says so)
        decision = await step(
            provision, self._providers, self._offer_order, self._clock, self._learned
        )
        if await self._save(provision, decision):
            if decision.events:
                self._notify()
            if decision.status is not provision.status:
                log.info(
                    "provision transition",
                    extra=log_fields(
                        provision_id=provision.id,
                        old=provision.status.value,
                        new=decision.status.value,
                        error=decision.error_message,
                    ),
                )

    async def _save(self, provision: Provision, decision: Decision) -> bool:
        """Save a decision with its events; decisions saved meanwhile share one transaction.

        While a transaction is being written, the saves that arrive wait and go together in
        the next one: a burst costs three round trips per batch, not per provision.
        """
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._saves.append((provision, decision, done))
        if not self._saving:
            self._saving = True
            try:
                while self._saves:
                    await asyncio.sleep(0)  # steps finishing now join this transaction
                    batch, self._saves = self._saves, []
                    try:
                        won = await self._store.save_decisions(
                            [(p, d) for p, d, _ in batch], self._clock.now()
                        )
                    except Exception as error:
                        for _, _, future in batch:
                            if not future.done():
                                future.set_exception(error)
                        continue
                    for (_, _, future), result in zip(batch, won, strict=True):
                        if not future.done():
                            future.set_result(result)
            finally:
                self._saving = False
        return await done
