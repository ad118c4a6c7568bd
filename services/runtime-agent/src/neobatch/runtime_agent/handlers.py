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
    BatchRequested,
    BatchStatus,
    BatchStatusReported,
)
from neobatch.common.logs import log_fields
from neobatch.runtime_agent.batch.batches import batch_doc_from_event, can_request_cancel
from neobatch.runtime_agent.batch.store import BatchStore

log = logging.getLogger("neobatch.runtime_agent.handlers")

# A cancel can overtake its batch.requested (separate consumers); retry it shortly after.
CANCEL_BEFORE_BATCH_RETRY_SECONDS = 2.0


class BatchHandlers:
    def __init__(self, store: BatchStore, clock: Clock, wake: Callable[[str | None], None]) -> None:
        self._store = store
        self._clock = clock
        self._wake = wake

    async def on_batch_requested(self, event: BatchRequested) -> None:
        doc = batch_doc_from_event(event, self._clock.now())
        # Reported at once so the job shows the batch as created (AIBrix's batch_created).
        accepted = BatchStatusReported(
            batch_id=event.batch_id, job_id=event.job_id, status=BatchStatus.VALIDATING
        )
        inserted = await self._store.insert_batch(doc, accepted)
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
