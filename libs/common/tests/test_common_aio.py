"""A background loop stops on the first cancellation even when a library swallowed it.

On Python 3.11 `asyncio.wait_for` (used inside nats-py's publish, among others) returns the
result instead of raising when a cancellation lands as its inner call completes. The task is
then still marked as cancelling, but nothing raises: a loop that goes back to its idle wait kept
a service's shutdown waiting for the full stop step (5 s, seen on every console stop that had
just published events).
"""

from __future__ import annotations

import asyncio

import pytest

from neobatch.common.aio import pause, wait_for_event


async def _swallow_cancellation(entered: asyncio.Event) -> None:
    """What a library call does when a cancellation lands as it completes: it returns."""
    entered.set()
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        return


@pytest.mark.parametrize("idle_wait", ["wait_for_event", "pause"])
async def test_a_loop_whose_step_swallowed_the_cancellation_stops_at_its_idle_wait(
    idle_wait: str,
) -> None:
    idle, entered = asyncio.Event(), asyncio.Event()
    passes = 0

    async def loop() -> None:
        nonlocal passes
        while True:
            passes += 1
            await _swallow_cancellation(entered)
            if idle_wait == "pause":
                await pause(30)
            else:
                await wait_for_event(idle, 30)

    task = asyncio.create_task(loop())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    try:
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done, "the loop went back to its idle wait after being cancelled"
        assert task.cancelled() and passes == 1
    finally:
        task.cancel()


async def test_an_uncancelled_wait_still_reports_set_or_timed_out() -> None:
    event = asyncio.Event()
    assert await wait_for_event(event, 0.01) is False
    event.set()
    assert await wait_for_event(event, 5) is True


async def test_a_task_that_took_its_cancellation_back_waits_normally() -> None:
    """`uncancel()` is how a task says it handled a cancellation on purpose: no raise then."""
    event = asyncio.Event()

    async def handled_then_waits() -> bool:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
        return await wait_for_event(event, 0.05)

    task = asyncio.create_task(handled_then_waits())
    await asyncio.sleep(0)
    task.cancel()
    assert await asyncio.wait_for(task, 5) is False
