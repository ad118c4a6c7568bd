"""Small asyncio helpers every service's loops use."""

from __future__ import annotations

import asyncio


async def wait_for_event(event: asyncio.Event, timeout_seconds: float) -> bool:
    """Wait until `event` is set or `timeout_seconds` pass; True if it was set.

    Used instead of `asyncio.wait_for(event.wait(), t)`, which on Python 3.11 can swallow a
    cancellation that arrives as the wait completes and so keep a stopping loop alive;
    `asyncio.timeout` does not.

    A cancellation some library already swallowed that way (nats-py's publish, for one) still
    marks the task as cancelling: it is raised here, at the loop's idle wait, so the loop stops
    on the first cancel instead of idling until its stopper gives up (a task that handled a
    cancellation on purpose says so with `uncancel()` and waits normally).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    try:
        async with asyncio.timeout(timeout_seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
