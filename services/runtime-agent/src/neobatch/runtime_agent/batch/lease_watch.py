"""Watches a running batch: keeps its lease, notices a cancel request, a lost lease, expiry.

The batch run checks `interrupted` before each new request and races its long waits (SSH,
engine start) against it, so a cancel, the end of the completion window or a lost lease
stops the work within about a second (DESIGN rules 3 and 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import TypeVar

from neobatch.common.aio import wait_for_event
from neobatch.common.clock import Clock
from neobatch.common.logs import log_fields
from neobatch.runtime_agent.batch.batches import is_expired
from neobatch.runtime_agent.batch.store import BatchStore

log = logging.getLogger("neobatch.runtime_agent.batch.lease_watch")

TICK_SECONDS = 1.0
T = TypeVar("T")


class Interrupted(Exception):
    """A wait was cut short by a cancel request, expiry or a lost lease."""


class BatchWatch:
    def __init__(
        self,
        store: BatchStore,
        clock: Clock,
        batch_id: str,
        owner: str,
        *,
        ttl_seconds: float,
        expires_at: datetime | None,
        cancel_requested: bool,
    ) -> None:
        self._store = store
        self._clock = clock
        self._batch_id = batch_id
        self._owner = owner
        self._ttl = ttl_seconds
        self._expires_at = expires_at
        self._poke = asyncio.Event()
        self.interrupted = asyncio.Event()
        self.lost = False
        self.cancel_requested = cancel_requested
        self.expired = False
        self._update_expired()

    def poke(self) -> None:
        """Look again now (a cancel request just arrived at this agent)."""
        self._poke.set()

    def _update_expired(self) -> None:
        if not self.expired and is_expired(self._expires_at, self._clock.now()):
            self.expired = True
        if self.lost or self.cancel_requested or self.expired:
            self.interrupted.set()

    def mark_lost(self) -> None:
        self.lost = True
        self.interrupted.set()

    async def run(self) -> None:
        """Until cancelled: renew every third of the lease, check cancel and expiry each tick."""
        renew_every = self._ttl / 3
        last_renew = time.monotonic()
        while not self.lost:
            with contextlib.suppress(TimeoutError):
                await wait_for_event(self._poke, TICK_SECONDS)
            self._poke.clear()
            try:
                if time.monotonic() - last_renew >= renew_every:
                    if not await self._renew():
                        log.warning("lease lost", extra=log_fields(batch_id=self._batch_id))
                        self.mark_lost()
                        return
                    last_renew = time.monotonic()
                await self._check()
            except Exception:
                # The database being away for a moment is not a lost lease, unless it outlasts
                # the lease itself: then another agent may already have taken over.
                log.warning("lease renewal failed", exc_info=True)
                if time.monotonic() - last_renew >= self._ttl:
                    self.mark_lost()
                    return
            self._update_expired()

    async def _renew(self) -> bool:
        return await self._store.renew_lease(self._batch_id, self._owner, self._ttl)

    async def _check(self) -> None:
        """Each tick: has a cancel been asked for?"""
        if not self.cancel_requested:
            self.cancel_requested = await self._store.cancel_requested(self._batch_id)

    async def race(self, work: Awaitable[T]) -> T:
        """Await `work` unless interrupted first: then cancel it and raise `Interrupted`."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.interrupted.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if task.cancelled():
            raise Interrupted
        return task.result()
