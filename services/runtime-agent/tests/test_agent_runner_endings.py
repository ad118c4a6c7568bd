"""How batches end other than `completed`: invalid input, engine never ready, SSH unreachable,
cancel, expiry; and the handlers' idempotency."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest
from faststream.exceptions import NackMessage

from neobatch.common.clock import utcnow
from neobatch.common.contracts import (
    BatchCancelRequested,
    BatchStatus,
    SshEndpoint,
)
from neobatch.runtime_agent.batch.batches import batch_doc_from_event
from neobatch.runtime_agent.machine.launch import workdir
from neobatch.sim.testing.servers import free_port

_SLEEP = "import time; time.sleep(3600)"


def placeholder_engine(agent, port: int):
    """Engine spec whose launched process only stands in; the engine sim answers on `port`."""
    spec = agent.sim_engine_spec(port=port)
    fields = {f: getattr(spec, f) for f in spec.__struct_fields__}
    return type(spec)(**{**fields, "command": [sys.executable, "-c", _SLEEP, "--port", str(port)]})


async def test_invalid_input_fails_with_line_numbers_and_dispatches_nothing(make_harness, agent):
    harness = await make_harness()
    good = agent.chat_lines(3)
    bad_url = {**good[1], "custom_id": "x", "url": "/v1/embeddings"}
    lines = [good[0], b"{oops", good[1], bad_url, good[1]]
    event = await harness.submit(lines, agent.sim_engine_spec())
    batch = await harness.wait_terminal(event.batch_id)

    assert batch.status is BatchStatus.FAILED and batch.error_code == "invalid_input_file"
    assert [(e["line"], e["code"]) for e in batch.errors] == [
        (2, "invalid_json_line"),
        (4, "mismatched_endpoint"),
        (5, "duplicate_custom_id"),
    ]
    assert "3 invalid lines" in batch.error_message
    assert not Path(workdir(event.batch_id)).exists()  # Never reached the machine.
    assert await harness.store.finished_lines(event.batch_id) == set()
    [_accepted, (subject, terminal)] = await harness.events(event.batch_id)
    assert subject == "batch.terminal" and terminal.error_code == "invalid_input_file"


async def test_engine_never_healthy_fails_and_is_stopped(make_harness, agent):
    harness = await make_harness()
    spec = agent.sim_engine_spec(extra_args=["--startup-delay-seconds", "600"], ready_timeout=2.0)
    event = await harness.submit(agent.chat_lines(5), spec)
    batch = await harness.wait_terminal(event.batch_id)

    assert batch.status is BatchStatus.FAILED and batch.error_code == "engine_not_ready"
    assert "within 2s" in batch.error_message
    assert agent.engine_pids(spec.port) == []
    assert not Path(workdir(event.batch_id)).exists()
    statuses = [(s, e.status) for s, e in await harness.events(event.batch_id)]
    # Heartbeats repeat in_progress while the engine is awaited; the transitions are these.
    statuses = [x for i, x in enumerate(statuses) if i == 0 or x != statuses[i - 1]]
    assert statuses == [
        ("batch.status", BatchStatus.VALIDATING),
        ("batch.status", BatchStatus.IN_PROGRESS),
        ("batch.terminal", BatchStatus.FAILED),
    ]


async def test_unreachable_host_fails(make_harness, agent):
    harness = await make_harness(ssh_ready_timeout_seconds=1.0, ssh_connect_timeout_seconds=1.0)
    nowhere = SshEndpoint(host="127.0.0.1", port=free_port(), username="root")
    event = await harness.submit(agent.chat_lines(2), agent.sim_engine_spec(), target=nowhere)
    batch = await harness.wait_terminal(event.batch_id)
    assert batch.status is BatchStatus.FAILED and batch.error_code == "ssh_unreachable"
    assert "127.0.0.1" in batch.error_message


async def test_wrong_pinned_host_key_fails(make_harness, agent, ssh_host):
    import asyncssh

    harness = await make_harness()
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    target = SshEndpoint(
        host=ssh_host.host, port=ssh_host.port, username=ssh_host.username, host_public_key=other
    )
    event = await harness.submit(agent.chat_lines(2), agent.sim_engine_spec(), target=target)
    batch = await harness.wait_terminal(event.batch_id)
    assert batch.status is BatchStatus.FAILED and batch.error_code == "host_key_mismatch"


async def test_cancel_mid_run_keeps_partial_output(make_harness, agent, engine_sim_factory):
    engine = engine_sim_factory(latency_ms=20)
    harness = await make_harness(dispatch={"concurrency": 4})
    lines = agent.chat_lines(2000)
    spec = placeholder_engine(agent, engine.port)
    event = await harness.submit(lines, spec)

    await harness.wait_results(event.batch_id, 20)
    cancel = BatchCancelRequested(batch_id=event.batch_id, job_id=event.job_id)
    await harness.agent.handlers.on_batch_cancel_requested(cancel)
    await harness.agent.handlers.on_batch_cancel_requested(cancel)  # A redelivery is harmless.
    batch = await harness.wait_terminal(event.batch_id)

    assert batch.status is BatchStatus.CANCELLED
    counts = batch.request_counts
    assert counts.total == 2000 and 20 <= counts.completed < 2000 and counts.failed == 0
    output = await harness.read_file(batch.output_file_id)
    assert len(output) == counts.completed
    assert len({line["custom_id"] for line in output}) == counts.completed
    assert agent.engine_pids(engine.port) == []
    assert not Path(workdir(event.batch_id)).exists()  # nothing of the batch left there
    statuses = [e.status for _, e in await harness.events(event.batch_id)]
    assert statuses[-2:] == [BatchStatus.CANCELLING, BatchStatus.CANCELLED]


async def test_cancel_before_start_never_touches_the_machine(make_harness, agent):
    harness = await make_harness()
    event = agent.batch_requested(
        batch_id=agent.new_batch_id(),
        input_file_id=await harness.upload(agent.chat_lines(2)),
        target=agent.target_for(harness.ssh_host),
        engine=agent.sim_engine_spec(),
    )
    # Accepted and cancelled before any runner looked at it.
    doc = batch_doc_from_event(event, utcnow())
    doc["cancel_requested_at"] = utcnow()
    assert await harness.store.insert_batch(doc, agent.accepted(event))
    harness.agent.runner.wake()
    batch = await harness.wait_terminal(event.batch_id)
    assert batch.status is BatchStatus.CANCELLED
    assert not Path(workdir(event.batch_id)).exists()
    [_accepted, (subject, terminal)] = await harness.events(event.batch_id)
    assert subject == "batch.terminal" and terminal.status is BatchStatus.CANCELLED


async def test_expiry_writes_batch_expired_lines(make_harness, agent, engine_sim_factory):
    engine = engine_sim_factory(latency_ms=20)
    harness = await make_harness(dispatch={"concurrency": 4})
    lines = agent.chat_lines(1000)
    spec = placeholder_engine(agent, engine.port)
    event = await harness.submit(lines, spec, expires_at=utcnow() + timedelta(seconds=3))
    batch = await harness.wait_terminal(event.batch_id)

    assert batch.status is BatchStatus.EXPIRED and batch.error_code == "batch_expired"
    counts = batch.request_counts
    assert 0 < counts.completed < 1000 and counts.completed + counts.failed == 1000
    output = await harness.read_file(batch.output_file_id)
    errors = await harness.read_file(batch.error_file_id)
    assert len(output) == counts.completed and len(errors) == counts.failed
    assert all(
        line["error"]["code"] == "batch_expired" and line["response"] is None for line in errors
    )
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(x["custom_id"] for x in lines)
    assert agent.engine_pids(engine.port) == []
    assert not Path(workdir(event.batch_id)).exists()


async def test_duplicate_request_is_accepted_once(make_harness, agent):
    harness = await make_harness()
    event = agent.batch_requested(
        batch_id=agent.new_batch_id(),
        input_file_id="file_missing",
        target=agent.target_for(harness.ssh_host),
        engine=agent.sim_engine_spec(),
    )
    await harness.agent.handlers.on_batch_requested(event)
    await harness.agent.handlers.on_batch_requested(event)
    assert await harness.db["batches"].count_documents({"_id": event.batch_id}) == 1
    batch = await harness.wait_terminal(event.batch_id)
    assert batch.status is BatchStatus.FAILED and batch.error_code == "invalid_input_file"


async def test_cancel_for_an_unknown_batch_is_retried_later(make_harness):
    harness = await make_harness()
    cancel = BatchCancelRequested(batch_id="batch_unknown", job_id="job_unknown")
    with pytest.raises(NackMessage):
        await harness.agent.handlers.on_batch_cancel_requested(cancel)


async def test_a_stop_at_the_cost_cap_fails_the_batch_with_budget_exceeded_lines(
    make_harness, agent, engine_sim_factory
):
    """Issue 16: the planner's stop at a job's max_cost_usd (a cancel with reason
    `budget_exceeded`): finished lines kept, every unsent one `budget_exceeded` in the error
    file (each custom_id once across both), the engine stopped, the batch `failed`."""
    engine = engine_sim_factory(latency_ms=20)
    harness = await make_harness(dispatch={"concurrency": 4})
    lines = agent.chat_lines(1000)
    event = await harness.submit(lines, placeholder_engine(agent, engine.port))
    await harness.wait_results(event.batch_id, 20)
    stop = BatchCancelRequested(
        batch_id=event.batch_id, job_id=event.job_id, reason="budget_exceeded"
    )
    await harness.agent.handlers.on_batch_cancel_requested(stop)
    batch = await harness.wait_terminal(event.batch_id)

    assert batch.status is BatchStatus.FAILED and batch.error_code == "budget_exceeded"
    counts = batch.request_counts
    assert 20 <= counts.completed < 1000 and counts.completed + counts.failed == 1000
    output = await harness.read_file(batch.output_file_id)
    errors = await harness.read_file(batch.error_file_id)
    assert len(output) == counts.completed and len(errors) == counts.failed
    assert all(line["error"]["code"] == "budget_exceeded" for line in errors)
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(x["custom_id"] for x in lines)
    assert agent.engine_pids(engine.port) == []
