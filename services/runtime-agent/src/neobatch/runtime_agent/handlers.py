"""Message handlers: accept a batch durably, record a cancel request, wake the runner.

Long work is not held inside a message (DESIGN rule 3): `batch.requested` is acked as soon
as the batch document exists, and the runner does the rest under a lease. Both handlers are
idempotent; a redelivered event finds its effect already there and is acked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from faststream.exceptions import NackMessage

from neobatch.common.clock import Clock
from neobatch.common.contracts import (
    BatchCancelRequested,
    BatchMachineRemoved,
    BatchRequested,
    BatchStatus,
    BatchStatusReported,
)
from neobatch.common.logs import log_fields
from neobatch.runtime_agent.batch.batches import (
    Batch,
    batch_doc_from_event,
    can_request_cancel,
)
from neobatch.runtime_agent.batch.machines import (
    BATCH_ENDED,
    DONE,
    REMOVED,
    WAITING,
    machine_doc_from_event,
    machine_done,
    machine_from_doc,
    machine_id,
    status_for_new_machine,
)
from neobatch.runtime_agent.batch.store import BatchStore

log = logging.getLogger("neobatch.runtime_agent.handlers")
ENDING = (BatchStatus.FINALIZING, BatchStatus.CANCELLING)

# A cancel can overtake its batch.requested (separate consumers); retry it shortly after.
CANCEL_BEFORE_BATCH_RETRY_SECONDS = 2.0


class BatchHandlers:
    def __init__(self, store: BatchStore, clock: Clock, wake: Callable[[str | None], None]) -> None:
        self._store = store
        self._clock = clock
        self._wake = wake

    async def on_batch_requested(self, event: BatchRequested) -> None:
        now = self._clock.now()
        doc = batch_doc_from_event(event, now)
        # Reported at once so the job shows the batch as created (AIBrix's batch_created).
        accepted = BatchStatusReported(
            batch_id=event.batch_id, job_id=event.job_id, status=BatchStatus.VALIDATING
        )
        spread = event.replicas > 1
        first = machine_doc_from_event(event, now, WAITING) if spread else None
        inserted = await self._store.insert_batch(doc, accepted, first)
        if not inserted:
            batch = await self._store.find_batch(event.batch_id)
            if batch is not None and batch.replicas > 1:
                await self._add_machine(event, batch)
                return
        if not inserted and await self._store.retarget(doc):
            # The planner replaced a lost machine: resume on the new one from the checkpoints.
            log.info(
                "batch moved to a new machine",
                extra=log_fields(batch_id=event.batch_id, provision_id=event.provision_id),
            )
        log.info(
            "batch accepted" if inserted else "batch already accepted",
            extra=log_fields(batch_id=event.batch_id, job_id=event.job_id),
        )
        self._wake(event.batch_id)

    async def _add_machine(self, event: BatchRequested, batch: Batch) -> None:
        """Another machine for a spread batch (idempotent by provision id); one for a batch
        that has ended is answered at once with `batch.machine_done` (`batch_ended`)."""
        machines = self._store.machines
        fields = log_fields(batch_id=event.batch_id, provision_id=event.provision_id)
        # Finalizing or cancelling: no chunk will be handed out any more either.
        ended = batch.status.is_terminal or batch.status in ENDING
        status = DONE if ended else status_for_new_machine(batch.status)
        doc = machine_doc_from_event(event, self._clock.now(), status)
        if ended:
            doc["reason"] = BATCH_ENDED
        events = [machine_done(machine_from_doc(doc), BATCH_ENDED)] if ended else []
        if await machines.add_machine(doc, events):
            log.info(
                "machine added to the batch", extra=log_fields(status=status, **fields["fields"])
            )
            self._wake(event.batch_id)
            return
        known = await machines.find_machine(doc["_id"])
        if known is not None and known.status in (DONE, REMOVED):
            # Asked again for a machine that has nothing to do here: release it (again).
            await machines.add_machine_done_again(known)
        log.info("machine already added", extra=fields)

    async def on_batch_machine_removed(self, event: BatchMachineRemoved) -> None:
        """The planner lost or released a machine: stop its run, free its chunks at once."""
        mid = machine_id(event.batch_id, event.provision_id)
        removed = await self._store.machines.end_machine(mid, event.reason, status=REMOVED)
        log.info(
            "machine removed" if removed else "machine removal ignored",
            extra=log_fields(batch_id=event.batch_id, provision_id=event.provision_id),
        )
        self._wake(event.batch_id)

    async def on_batch_cancel_requested(self, event: BatchCancelRequested) -> None:
        fields = log_fields(batch_id=event.batch_id, job_id=event.job_id)
        if await self._store.request_cancel(event.batch_id, self._clock.now(), event.reason):
            log.info("batch cancel requested", extra=fields)
            self._wake(event.batch_id)
            return
        batch = await self._store.find_batch(event.batch_id)
        if batch is None:
            raise NackMessage(delay=CANCEL_BEFORE_BATCH_RETRY_SECONDS)
        if can_request_cancel(batch.status):
            self._wake(event.batch_id)  # Asked before: make sure the run has noticed.
        log.info(
            "batch cancel ignored", extra=log_fields(status=batch.status.value, **fields["fields"])
        )
