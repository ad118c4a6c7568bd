"""Small asyncio helpers every service's loops use."""

from __future__ import annotations

import asyncio


def raise_pending_cancel() -> None:
    """Raise the cancellation of the current task if one is pending but was swallowed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def pause(seconds: float) -> None:
    """`asyncio.sleep` for a background loop's pause between rounds: a cancellation a library
    swallowed during the round is raised here (see `wait_for_event`)."""
    raise_pending_cancel()
    await asyncio.sleep(seconds)


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
    raise_pending_cancel()
    try:
        async with asyncio.timeout(timeout_seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
