"""`dispatch_all`: send a batch's requests with a changing concurrency limit and a stop rule.

No I/O of its own: it drives injected `send` and `on_result` callables (the engine client and
the checkpoint writer), so the concurrency and stop rules are testable alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from neobatch.common.batch_input import BatchRequest
from neobatch.runtime_agent.dispatch.concurrency import ConcurrencyLimit, FixedLimit
from neobatch.runtime_agent.dispatch.tally import RequestResult


class DispatchSummary(msgspec.Struct, frozen=True, kw_only=True):
    sent: int
    # True when `should_stop` ended dispatch before the input ran out.
    stopped: bool


async def dispatch_all(
    requests: AsyncIterator[BatchRequest],
    send: Callable[[BatchRequest], Awaitable[RequestResult]],
    on_result: Callable[[RequestResult], Awaitable[None]],
    *,
    concurrency: int | None = None,
    controller: ConcurrencyLimit | None = None,
    should_stop: Callable[[], bool],
) -> DispatchSummary:
    """Send every request with at most `controller.limit` in flight (or a fixed `concurrency`).

    The limit may change while this runs (the controller is fed by `send`'s attempts): one
    worker per possible slot (`controller.maximum`), each waiting until fewer than `limit`
    requests are in flight before taking the next one. `should_stop` is checked before each
    new request (cancel, expiry, lost lease): requests already in flight finish and are
    recorded, nothing new starts. An exception from `send` or `on_result` cancels the rest
    and propagates.
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

    limit = controller

    def free_slot() -> bool:
        return exhausted or in_flight < limit.limit

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
                await on_result(await send(request))
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

    async with asyncio.TaskGroup() as group:
        for n in range(controller.maximum):
            group.create_task(worker(), name=f"dispatch-{n}")
    return DispatchSummary(sent=sent, stopped=stopped and not exhausted)
