"""An asyncio event loop on a daemon thread, for servers that must outlive any one test's loop.

pytest-asyncio gives each test its own loop, so an in-process server started on a test loop can
only serve that test, and a sync test would block it. Servers on this loop answer every test
(sync or async, and subprocesses) over loopback sockets.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self, name: str = "neobatch-sim-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout_seconds: float = 30) -> T:
        """Run ``coro`` on the background loop and block for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_seconds)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self._cancel_remaining())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _cancel_remaining(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.loop.shutdown_asyncgens()

    def __enter__(self) -> BackgroundLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
