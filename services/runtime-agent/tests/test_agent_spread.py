"""One batch on several machines (issue 15), driven with events as the planner sends them.

Each machine is the loopback SSH host with its own engine simulator (its own port and latency);
the machine's "engine" is a placeholder process the agent launches and stops, so the engine
simulator's request counter says what each machine ran.
"""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec

from neobatch.common.clock import utcnow
from neobatch.common.contracts import (
    BatchCancelRequested,
    BatchMachineDone,
    BatchMachineRemoved,
    BatchMachineWanted,
    BatchRequested,
    BatchStatus,
    BatchStatusReported,
    decode_event,
)
from neobatch.runtime_agent.machine.launch import workdir
from neobatch.sim.testing.waiting import wait_until

_SLEEP = "import time; time.sleep(3600)"


def placeholder(agent: Any, port: int):
    """An engine spec whose launch is a sleeper standing for the engine simulator on `port`."""
    spec = agent.sim_engine_spec(port=port)
    command = [sys.executable, "-c", _SLEEP, "--port", str(port)]
    return msgspec.structs.replace(spec, command=command)


class Spread:
    """A spread batch: its first event, and one more `batch.requested` per machine."""

    def __init__(self, harness: Any, agent: Any, first: BatchRequested) -> None:
        self.harness, self.agent, self.first = harness, agent, first

    @property
    def batch_id(self) -> str:
        return self.first.batch_id

    def machine(self, engine: Any, provision_id: str | None = None) -> BatchRequested:
        return msgspec.structs.replace(
            self.first,
            provision_id=provision_id or f"prov_{uuid.uuid4().hex}",
            engine=placeholder(self.agent, engine.port),
            event_id=f"evt_{uuid.uuid4().hex}",
        )

    async def add(self, engine: Any, handlers: Any = None) -> BatchRequested:
        event = self.machine(engine)
        await (handlers or self.harness.agent.handlers).on_batch_requested(event)
        return event

    async def outbox(self, subject: str, kind: type) -> list[Any]:
        found = []
        async for doc in self.harness.db["outbox"].find({}).sort("created_at", 1):
            # Any agent's namespace: two agents of one test each have their own.
            if doc["subject"].endswith(f".{subject}"):
                event = decode_event(doc["payload"], kind)
                if event.batch_id == self.batch_id:
                    found.append(event)
        return found

    async def machine_done(self) -> list[BatchMachineDone]:
        return await self.outbox("batch.machine_done", BatchMachineDone)

    async def output_ids(self, batch: Any) -> list[str]:
        ok = await self.harness.read_file(batch.output_file_id)
        errors = await self.harness.read_file(batch.error_file_id)
        return [line["custom_id"] for line in ok + errors]


async def start_spread(
    harness, agent, lines, engines, *, expires_at=None, replicas=None
) -> tuple[Spread, list]:
    """Submit a batch asking for `replicas` (default len(engines)) machines; the first machine
    comes with it, the others join right after (as the planner sends them when theirs are up)."""
    first_engine, *others = engines
    event = agent.batch_requested(
        batch_id=agent.new_batch_id(),
        input_file_id=await harness.upload(lines),
        target=agent.target_for(harness.ssh_host),
        engine=placeholder(agent, first_engine.port),
        expires_at=expires_at,
    )
    event = msgspec.structs.replace(event, replicas=replicas or len(engines))
    await harness.agent.handlers.on_batch_requested(event)
    spread = Spread(harness, agent, event)
    added = [event] + [await spread.add(engine) for engine in others]
    return spread, added


def assert_each_line_once(ids: list[str], lines: list[dict[str, Any]]) -> None:
    expected = [line["custom_id"] for line in lines]
    assert Counter(ids) == Counter(expected), "each custom_id exactly once"


async def test_one_batch_on_three_machines(make_harness, agent, engine_sim_factory):
    harness = await make_harness(dispatch={"concurrency": 8})
    engines = [engine_sim_factory(latency_ms=5) for _ in range(3)]
    lines = agent.chat_lines(600)
    spread, events = await start_spread(harness, agent, lines, engines)
    # A redelivered batch.requested adds nothing.
    await harness.agent.handlers.on_batch_requested(events[1])

    batch = await harness.wait_terminal(spread.batch_id, within_seconds=60)

    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (600, 0)
    output = await harness.read_file(batch.output_file_id)
    assert [line["custom_id"] for line in output] == [line["custom_id"] for line in lines]
    served = [await agent.engine_request_count(engine.url) for engine in engines]
    assert sum(served) == 600 and all(count > 0 for count in served), served
    # Every machine was told to go, once, with what it did.
    done = await wait_until(lambda: _all_done(spread, 3), 10)
    assert {d.provision_id for d in done} == {e.provision_id for e in events}
    assert sum(d.lines_completed for d in done) == 600
    assert {d.reason for d in done} <= {"no_work_left", "batch_ended"}
    progress = await spread.outbox("batch.status", BatchStatusReported)
    shares = [p.lines_by_machine for p in progress if p.lines_by_machine]
    assert shares and set(shares[-1]) <= {e.provision_id for e in events}
    # Each machine's engine was stopped and its work directory removed.
    for engine, event in zip(engines, events, strict=True):
        assert agent.engine_pids(engine.port) == []
        assert not Path(workdir(f"{spread.batch_id}.{event.provision_id}")).exists()


async def _all_done(spread: Spread, machines: int) -> list[BatchMachineDone] | None:
    done = await spread.machine_done()
    return done if len(done) >= machines else None


async def test_machines_of_different_speeds_finish_together(
    make_harness, agent, engine_sim_factory
):
    harness = await make_harness(dispatch={"concurrency": 4})
    # One machine ten times slower than the others: stealing keeps it from holding the end.
    engines = [engine_sim_factory(latency_ms=ms) for ms in (10, 10, 100)]
    lines = agent.chat_lines(600)
    spread, events = await start_spread(harness, agent, lines, engines)

    batch = await harness.wait_terminal(spread.batch_id, within_seconds=90)

    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    ids = await spread.output_ids(batch)
    assert_each_line_once(ids, lines)
    machines = await harness.store.machines.list_machines(spread.batch_id)
    ends = [m.dispatch_ended_at for m in machines]
    assert all(end is not None for end in ends)
    spread_seconds = (max(ends) - min(ends)).total_seconds()
    # One chunk's time on the slow machine: a slice of 4 lines at 100 ms... the chunk of 8+
    # lines (the smallest) takes 0.2 s at 4 in flight; allow scheduling on a loaded machine.
    assert spread_seconds < 1.5, spread_seconds
    slow = next(m for m in machines if m.provision_id == events[2].provision_id)
    fast = [m for m in machines if m.provision_id != events[2].provision_id]
    # The slow machine ran less than its equal share: the fast ones took its work.
    assert slow.lines_completed < min(m.lines_completed for m in fast)


async def test_a_removed_machine_s_work_is_finished_by_the_others(
    make_harness, agent, engine_sim_factory
):
    harness = await make_harness(dispatch={"concurrency": 4})
    engines = [engine_sim_factory(latency_ms=20) for _ in range(3)]
    # Enough work that the machine to remove still has some when it starts sending, even when
    # its engine comes up seconds after the others' on a loaded machine (with 900 lines it
    # once found nothing left, ended `no_work_left`, and the removal came too late).
    lines = agent.chat_lines(2400)
    spread, events = await start_spread(harness, agent, lines, engines)
    lost = events[1]
    await wait_until(lambda: agent.engine_request_count(engines[1].url), 20)

    removed = BatchMachineRemoved(
        batch_id=spread.batch_id, job_id=lost.job_id, provision_id=lost.provision_id, reason="lost"
    )
    await harness.agent.handlers.on_batch_machine_removed(removed)
    await harness.agent.handlers.on_batch_machine_removed(removed)  # a redelivery: harmless
    sent_when_removed = await agent.engine_request_count(engines[1].url)
    batch = await harness.wait_terminal(spread.batch_id, within_seconds=60)

    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    assert_each_line_once(await spread.output_ids(batch), lines)
    assert batch.request_counts.completed == 2400
    # The removed machine stopped at once: at most what it had in flight went on after.
    assert await agent.engine_request_count(engines[1].url) <= sent_when_removed + 4
    done = await spread.machine_done()
    assert lost.provision_id not in {d.provision_id for d in done}  # the planner knows already
    assert {d.provision_id for d in done} == {events[0].provision_id, events[2].provision_id}


async def test_lines_left_with_every_machine_ended_ask_for_a_machine(
    make_harness, agent, engine_sim_factory
):
    """A chunk that comes back after every other machine found nothing left (its machine held
    it, then was lost) is not left waiting forever: the batch asks for a machine, and the
    machine the planner then sends runs it."""
    harness = await make_harness(dispatch={"concurrency": 4, "cancel_grace_seconds": 1})
    hanging = engine_sim_factory(latency_ms=600_000)
    fast = engine_sim_factory(latency_ms=5)
    lines = agent.chat_lines(200)
    # The hanging machine first, alone: it claims a chunk and sends all it can of it.
    spread, events = await start_spread(harness, agent, lines, [hanging], replicas=2)
    await wait_until(lambda: _in_flight(hanging.url), 30, message="requests hanging")
    # The fast machine runs every other chunk and ends: nothing left to claim or steal.
    second = await spread.add(fast)
    await wait_until(lambda: _done_with(spread, second.provision_id), 30, message="fast done")
    assert not await spread.outbox("batch.machine_wanted", BatchMachineWanted)

    # The hanging machine is lost: its chunk is free, and no machine is left to run it.
    removed = BatchMachineRemoved(
        batch_id=spread.batch_id,
        job_id=events[0].job_id,
        provision_id=events[0].provision_id,
        reason="lost",
    )
    await harness.agent.handlers.on_batch_machine_removed(removed)
    wanted = await wait_until(
        lambda: spread.outbox("batch.machine_wanted", BatchMachineWanted), 15, message="wanted"
    )
    assert wanted[0].job_id == events[0].job_id and 0 < wanted[0].lines_left < 200

    await spread.add(engine_sim_factory(latency_ms=5))
    batch = await harness.wait_terminal(spread.batch_id, within_seconds=60)
    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    assert_each_line_once(await spread.output_ids(batch), lines)
    assert batch.request_counts.completed == 200


async def _in_flight(url: str) -> int:
    async with httpx.AsyncClient() as client:
        text = (await client.get(url + "/metrics")).text
    found = re.search(r"^neobatch_sim_requests_in_flight (\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


async def _done_with(spread: Spread, provision_id: str) -> bool:
    return any(d.provision_id == provision_id for d in await spread.machine_done())


async def test_a_killed_agent_s_machines_are_taken_over(make_harness, agent, engine_sim_factory):
    first = await make_harness(dispatch={"concurrency": 4}, lease_seconds=2.0)
    engines = [engine_sim_factory(latency_ms=20) for _ in range(3)]
    lines = agent.chat_lines(900)
    spread, events = await start_spread(first, agent, lines, engines)
    await first.wait_results(spread.batch_id, 60)

    # SIGKILL-like: the first agent stops without letting go of any lease.
    store = first.agent.store
    store.release_lease = _noop  # type: ignore[method-assign]
    store.machines.release_machine = _noop  # type: ignore[method-assign]
    runner_task = _runner_task(first)
    runner_task.cancel()
    await asyncio.gather(runner_task, return_exceptions=True)
    held = await store.machines.list_machines(spread.batch_id)
    assert any(m.lease_owner and m.lease_owner.startswith(first.agent.runner.owner) for m in held)

    second = await make_harness(dispatch={"concurrency": 4}, lease_seconds=2.0)
    second_batch = await second.wait_terminal(spread.batch_id, within_seconds=60)

    assert second_batch.status is BatchStatus.COMPLETED
    assert_each_line_once(await spread.output_ids(second_batch), lines)
    machines = await second.store.machines.list_machines(spread.batch_id)
    assert {m.status for m in machines} == {"done"}
    done = await spread.machine_done()
    assert sorted(d.provision_id for d in done) == sorted(e.provision_id for e in events)
    for engine in engines:
        assert agent.engine_pids(engine.port) == []


async def test_cancel_with_three_machines_running(make_harness, agent, engine_sim_factory):
    harness = await make_harness(dispatch={"concurrency": 2})
    engines = [engine_sim_factory(latency_ms=30) for _ in range(3)]
    lines = agent.chat_lines(1500)
    spread, events = await start_spread(harness, agent, lines, engines)
    await harness.wait_results(spread.batch_id, 30)

    cancel = BatchCancelRequested(batch_id=spread.batch_id, job_id=events[0].job_id)
    await harness.agent.handlers.on_batch_cancel_requested(cancel)
    batch = await harness.wait_terminal(spread.batch_id, within_seconds=30)

    assert batch.status is BatchStatus.CANCELLED
    counts = batch.request_counts
    assert counts.total == 1500 and 30 <= counts.completed < 1500
    assert counts.completed + counts.failed == 1500
    errors = await harness.read_file(batch.error_file_id)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert_each_line_once(await spread.output_ids(batch), lines)
    done = await wait_until(lambda: _all_done(spread, 3), 10)
    assert {d.provision_id for d in done} == {e.provision_id for e in events}
    assert {d.reason for d in done} == {"batch_ended"}
    # Each machine's run sees its machine ended and stops its engine (after machine_done).
    for engine in engines:
        await wait_until(lambda e=engine: agent.engine_pids(e.port) == [], 15)
    # A machine that comes up after the end is released at once.
    late = await spread.add(engine_sim_factory())
    done = await spread.machine_done()
    assert [d.reason for d in done if d.provision_id == late.provision_id] == ["batch_ended"]


async def test_expiry_with_three_machines_running(make_harness, agent, engine_sim_factory):
    harness = await make_harness(dispatch={"concurrency": 2})
    engines = [engine_sim_factory(latency_ms=30) for _ in range(3)]
    lines = agent.chat_lines(1500)
    expires_at = utcnow() + timedelta(seconds=6)
    spread, events = await start_spread(harness, agent, lines, engines, expires_at=expires_at)
    batch = await harness.wait_terminal(spread.batch_id, within_seconds=30)

    assert batch.status is BatchStatus.EXPIRED
    counts = batch.request_counts
    assert 0 < counts.completed < 1500 and counts.completed + counts.failed == 1500
    errors = await harness.read_file(batch.error_file_id)
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert_each_line_once(await spread.output_ids(batch), lines)
    done = await wait_until(lambda: _all_done(spread, 3), 10)
    assert {d.provision_id for d in done} == {e.provision_id for e in events}
    for engine in engines:
        await wait_until(lambda e=engine: agent.engine_pids(e.port) == [], 15)


async def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


def _runner_task(harness: Any) -> asyncio.Task[Any]:
    assert harness.runner_task is not None
    return harness.runner_task
