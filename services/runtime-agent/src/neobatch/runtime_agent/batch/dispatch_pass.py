"""One dispatch pass of a batch: every request without a stored result, sent and checkpointed.

A pass ends when the input runs out, when the run is interrupted (cancel, expiry, lost lease)
or when the SSH connection or tunnel drops; the run then decides what comes next. Counts grow
only as results are stored (`CheckpointWriter.on_stored`), so progress never reports a result
that a crash could still lose.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from neobatch.common.batch_input import BatchRequest, is_blank, parse_request, strip_bom
from neobatch.common.logs import log_fields
from neobatch.common.metrics import DispatchObserver, timed_dispatch
from neobatch.runtime_agent.batch.batches import Batch
from neobatch.runtime_agent.batch.store import BatchStore
from neobatch.runtime_agent.dispatch.order import NO_LEAF, OrderPlanner, prefix_key
from neobatch.runtime_agent.dispatch.pool import after_grace, dispatch_all
from neobatch.runtime_agent.dispatch.tally import RequestResult, Tally
from neobatch.runtime_agent.engine.client import EngineClient
from neobatch.runtime_agent.results.writer import pending_limit

log = logging.getLogger("neobatch.runtime_agent.batch.dispatch_pass")

# How long the first answer into an empty checkpoint buffer waits for others to join it.
DISPATCH_CHECKPOINT_LINGER_SECONDS = 0.025
# Raw input lines one read of the input file may hold for the prefix groups it yields after
# that read (`order.Sweep`): a batch whose shuffled groups weigh more reads the file again.
ORDER_BUFFER_BYTES = 32 * 1024 * 1024


async def pending_requests(
    store: BatchStore, input_file_id: str, done: set[int]
) -> AsyncIterator[BatchRequest]:
    """The requests of the input file, in order, except the lines in `done` and blank lines."""
    index = -1
    async for raw in store.input_lines(input_file_id):
        index += 1
        raw = strip_bom(raw, index)
        if index not in done and not is_blank(raw):
            yield parse_request(raw, index)


async def ordered_requests(
    store: BatchStore,
    input_file_id: str,
    done: set[int],
    *,
    log_ids: dict[str, str] | None = None,
    buffer_bytes: int = ORDER_BUFFER_BYTES,
) -> AsyncIterator[BatchRequest]:
    """`pending_requests` in prefix-aware order (`dispatch.order`): one read of the input to
    plan, then one read per sweep of the plan (one for most batches). Each pending line is
    yielded exactly once; no body is held but the buffered ones of the current sweep."""
    started = time.monotonic()
    planner = OrderPlanner()
    index = -1
    async for raw in store.input_lines(input_file_id):
        index += 1
        raw = strip_bom(raw, index)
        if index in done or is_blank(raw):
            planner.skip()
        else:
            planner.add(prefix_key(parse_request(raw, index).body), len(raw))
    plan = planner.plan(buffer_bytes)
    log.info(
        "dispatch order planned",
        extra=log_fields(
            **(log_ids or {}),
            prefix_groups=plan.leaves,
            input_reads=len(plan.sweeps),
            seconds=round(time.monotonic() - started, 3),
        ),
    )
    sweep_of, streamed = plan.sweep_of()
    for number, sweep in enumerate(plan.sweeps):
        held: dict[int, list[tuple[int, bytes]]] = {leaf: [] for leaf in sweep.buffered}
        index = -1
        async for raw in store.input_lines(input_file_id):
            index += 1
            leaf = plan.leaf_of[index] if index < plan.lines else NO_LEAF
            if leaf == NO_LEAF or sweep_of[leaf] != number:
                continue
            raw = strip_bom(raw, index)
            if streamed[leaf]:
                yield parse_request(raw, index)
            else:
                held[leaf].append((index, raw))
        for leaf in sweep.buffered:
            for line, raw in held.pop(leaf):
                yield parse_request(raw, line)


async def dispatch_pass(
    store: BatchStore,
    batch: Batch,
    client: EngineClient,
    tally: Tally,
    *,
    interrupted: asyncio.Event,
    tunnel_down: Callable[[], bool],
    prefix_order: bool = True,
) -> float:
    """Send what has no stored result yet, adding each stored result to `tally`.

    Returns the seconds the pass took (sending and checkpointing).
    """
    done = await store.finished_lines(batch.id)
    started, finished_before = time.monotonic(), tally.finished

    async def record(result: RequestResult) -> None:
        if result.status_code is None and tunnel_down():
            return  # The tunnel died, not the request: leave it for the resumed run.
        # The slot frees on the answer; `add` pauses this slot (no new send) while more
        # than `pending_limit` answers (or the byte bound) wait to be stored, so a crash
        # re-sends at most concurrency + that many requests, none recorded (CheckpointWriter).
        await writer.add(result)

    def stored(completed: int, failed: int) -> None:
        tally.completed += completed
        tally.failed += failed

    observer = DispatchObserver()
    ids = {"batch_id": batch.id, "job_id": batch.job_id}
    # Picks the controller (the engine's load gauges, else AIMD) and feeds it while this runs.
    async with client.watching_load(ids):
        writer = store.checkpoint_writer(
            batch.id,
            max_pending=pending_limit(client.controller.maximum),
            on_stored=stored,
            # Nothing waits on the linger now (slots free on the answer): a longer one makes
            # fewer, larger writes (the database's cost per document falls up to ~30 a write).
            flush_interval_seconds=DISPATCH_CHECKPOINT_LINGER_SECONDS,
        )
        async with writer:
            try:
                requests = (
                    ordered_requests(store, batch.input_file_id, done, log_ids=ids)
                    if prefix_order
                    else pending_requests(store, batch.input_file_id, done)
                )
                summary = await dispatch_all(
                    requests,
                    timed_dispatch(client.send, observer),
                    record,
                    controller=client.controller,
                    should_stop=lambda: interrupted.is_set() or tunnel_down(),
                    abandon_in_flight=lambda: after_grace(interrupted, client.cancel_grace_seconds),
                )
            except BaseException:
                await writer.abort()
                raise
            finally:
                observer.flush()
    elapsed = time.monotonic() - started
    finished = tally.finished - finished_before
    log.info(
        "dispatch ended",
        extra=log_fields(
            **ids,
            sent=summary.sent,
            stopped=summary.stopped,
            abandoned=summary.abandoned,
            seconds=round(elapsed, 3),
            requests_per_second=round(finished / elapsed, 1) if elapsed > 0 else None,
            # Which concurrency controller ran (engine_load, aimd, fixed), where it ended, and
            # the highest limit it reached.
            controller=client.controller.name,
            concurrency_limit=client.controller.limit,
            order="prefix" if prefix_order else "input",
            concurrency_peak=client.controller.peak,
            checkpoint_writes=writer.writes,
            # Times dispatch paused because too many answers waited to be stored.
            checkpoint_pauses=writer.paused,
        ),
    )
    return elapsed
