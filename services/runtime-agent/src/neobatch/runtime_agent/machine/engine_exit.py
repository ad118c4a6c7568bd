"""Whether the engine process exited mid-batch (crash, OOM), asked over SSH when a request's
connection failed.

A transport error (no HTTP status) is either the request's, the tunnel's or the engine's. The
tunnel's is known locally (`RemoteHost.tunnel_down`); the engine's takes one `is_running` call
on the machine, bounded by `CHECK_TIMEOUT_SECONDS` and shared by the requests that failed
before it began (at most one check in flight). Once the engine
is known to have exited, `exited` stays True: dispatch stops sending and leaves the requests
that failed with it for the relaunched engine (`batch.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import asyncssh

from neobatch.runtime_agent.machine.errors import RemoteError

CHECK_TIMEOUT_SECONDS = 10.0


class EngineExitWatch:
    def __init__(
        self,
        is_running: Callable[[], Awaitable[bool]],
        *,
        timeout_seconds: float = CHECK_TIMEOUT_SECONDS,
    ) -> None:
        self._is_running = is_running
        self._timeout = timeout_seconds
        self._check: asyncio.Task[bool] | None = None
        self._check_started = -float("inf")
        self.exited = False

    async def confirm(self) -> bool:
        """True when the engine process has exited, by a check begun after this call: a
        request that failed while an earlier check was under way (begun while the engine
        still ran) waits for it, then joins or starts the next one."""
        failed_at = time.monotonic()
        while not self.exited:
            if self._check is None or (self._check.done() and self._check_started < failed_at):
                self._check_started = time.monotonic()
                self._check = asyncio.ensure_future(self._ask())
            started = self._check_started
            # Shielded: a request cancelled while waiting must not cancel the others' check.
            exited = await asyncio.shield(self._check)
            if exited or started >= failed_at:
                return exited
        return True

    def mark_dead(self) -> None:
        """The engine said so itself (vLLM's EngineDeadError 500): it has exited, even if its
        server process still runs (the session stops that before relaunching)."""
        self.exited = True

    async def _ask(self) -> bool:
        try:
            running = await asyncio.wait_for(self._is_running(), self._timeout)
        except (TimeoutError, RemoteError, OSError, asyncssh.Error):
            running = True  # unknown: the tunnel and connection checks cover a lost machine
        self.exited = self.exited or not running
        return self.exited

    async def close(self) -> None:
        if self._check is not None and not self._check.done():
            self._check.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._check
