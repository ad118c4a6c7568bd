"""`dispatch_all`: send a batch's requests with a changing concurrency limit and a stop rule.

No I/O of its own: it drives injected `send` and `on_result` callables (the engine client and
the checkpoint writer), so the concurrency and stop rules are testable alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from neobatch.common.batch_input import BatchRequest
from neobatch.runtime_agent.dispatch.concurrency import ConcurrencyLimit, FixedLimit
from neobatch.runtime_agent.dispatch.tally import RequestResult


class DispatchSummary(msgspec.Struct, frozen=True, kw_only=True):
    sent: int
    # True when `should_stop` ended dispatch before the input ran out.
    stopped: bool
    # Requests sent but abandoned unanswered (`abandon_in_flight`): nothing recorded for them.
    abandoned: int = 0


async def after_grace(interrupted: asyncio.Event, grace_seconds: float) -> None:
    """Returns `grace_seconds` after `interrupted` is set: when to abandon what is in flight."""
    await interrupted.wait()
    await asyncio.sleep(grace_seconds)


async def dispatch_all(
    requests: AsyncIterator[BatchRequest],
    send: Callable[[BatchRequest], Awaitable[RequestResult]],
    on_result: Callable[[RequestResult], Awaitable[None]],
    *,
    concurrency: int | None = None,
    controller: ConcurrencyLimit | None = None,
    should_stop: Callable[[], bool],
    abandon_in_flight: Callable[[], Awaitable[None]] | None = None,
) -> DispatchSummary:
    """Send every request with at most `controller.limit` in flight (or a fixed `concurrency`).

    The limit may change while this runs (the controller is fed by `send`'s attempts): one
    worker per possible slot (`controller.maximum`), each waiting until fewer than `limit`
    requests are in flight before taking the next one. `should_stop` is checked before each
    new request (cancel, expiry, lost lease): requests already in flight finish and are
    recorded, nothing new starts. When `abandon_in_flight` returns (a grace after the stop),
    the requests still waiting for their answer are cancelled and left unrecorded (closing
    their connection: vLLM stops generating them); a request whose answer is being recorded
    is never cut. An exception from `send` or `on_result` cancels the rest and propagates.
    """
    if controller is None:
        if concurrency is None:
            raise ValueError("pass concurrency or controller")
        controller = FixedLimit(concurrency)
    # The input iterator is shared; an async generator may not be advanced concurrently.
    next_lock = asyncio.Lock()
    slots = asyncio.Condition()
    in_flight = 0
    sent = 0
    stopped = False
    exhausted = False
    # The workers now awaiting `send`, and whether the abandon moment came.
    sending: set[asyncio.Task[None]] = set()
    abandoned = 0
    abandoning = False

    limit = controller

    def free_slot() -> bool:
        return exhausted or in_flight < limit.limit

    async def send_unless_abandoned(request: BatchRequest) -> RequestResult | None:
        nonlocal abandoned
        task = asyncio.current_task()
        assert task is not None
        sending.add(task)
        try:
            return await send(request)
        except asyncio.CancelledError:
            if not abandoning:
                raise
            task.uncancel()
            abandoned += 1
            return None
        finally:
            sending.discard(task)

    async def abandon_when_due() -> None:
        nonlocal abandoning, stopped
        assert abandon_in_flight is not None
        await abandon_in_flight()
        abandoning = stopped = True
        for task in list(sending):
            task.cancel()

    async def worker() -> None:
        nonlocal sent, stopped, exhausted, in_flight
        while not exhausted:
            async with slots:
                await slots.wait_for(free_slot)
                in_flight += 1
            try:
                if should_stop():
                    stopped = True
                    return
                async with next_lock:
                    if exhausted:
                        return
                    request = await anext(requests, None)
                    if request is None:
                        exhausted = True
                        return
                    sent += 1
                result = await send_unless_abandoned(request)
                if result is not None:
                    await on_result(result)
            finally:
                async with slots:
                    in_flight -= 1
                    if exhausted or stopped:
                        slots.notify_all()  # every waiting worker ends now
                    else:
                        # Wake as many as there are free slots (the limit may have grown),
                        # not all: with a maximum of 512 and 256 in flight, waking every
                        # idle worker on each answer cost more CPU than the request.
                        slots.notify(max(0, limit.limit - in_flight))

    abandon = None if abandon_in_flight is None else asyncio.create_task(abandon_when_due())
    try:
        async with asyncio.TaskGroup() as group:
            for n in range(controller.maximum):
                group.create_task(worker(), name=f"dispatch-{n}")
    finally:
        if abandon is not None:
            abandon.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await abandon
    return DispatchSummary(
        sent=sent, stopped=(stopped and not exhausted) or abandoned > 0, abandoned=abandoned
    )
