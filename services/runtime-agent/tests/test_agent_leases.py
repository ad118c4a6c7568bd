"""Several agents, one database: only the lease holder works; a dead agent's batch is resumed."""

from __future__ import annotations

import getpass
import logging
import sys
from datetime import timedelta

import asyncssh

from neobatch.common.clock import utcnow
from neobatch.common.contracts import BatchStatus, SshEndpoint
from neobatch.runtime_agent.batch.batches import batch_doc_from_event
from neobatch.runtime_agent.machine.launch import plan_launch
from neobatch.runtime_agent.machine.remote import connect, load_client_key
from neobatch.sim.ssh_host import start_ssh_host
from neobatch.sim.testing.waiting import wait_until

CHAT = "/v1/chat/completions"
_SLEEP = "import time; time.sleep(3600)"


def placeholder_engine(agent, port: int):
    spec = agent.sim_engine_spec(port=port)
    fields = {f: getattr(spec, f) for f in spec.__struct_fields__}
    return type(spec)(**{**fields, "command": [sys.executable, "-c", _SLEEP, "--port", str(port)]})


async def test_two_agents_send_each_request_once(make_harness, agent, engine_sim, caplog):
    caplog.set_level(logging.INFO, logger="neobatch.runtime_agent")
    first = await make_harness(dispatch={"concurrency": 8})
    second = await make_harness(dispatch={"concurrency": 8})
    lines = agent.chat_lines(300)
    spec = placeholder_engine(agent, engine_sim.port)
    event = await first.submit(lines, spec)
    second.agent.runner.wake()
    batch = await first.wait_terminal(event.batch_id)

    assert batch.status is BatchStatus.COMPLETED and batch.request_counts.completed == 300
    assert await agent.engine_request_count(engine_sim.url) == 300
    # One agent took the lease and ran the batch; the other never claimed it. A run logs its
    # claim before it does anything, so the log is complete once the batch has ended.
    claims = [
        r
        for r in caplog.records
        if r.getMessage() == "batch claimed" and r.fields["batch_id"] == event.batch_id
    ]
    assert len(claims) == 1


async def test_batch_of_a_dead_agent_is_taken_over(make_harness, agent, engine_sim, ssh_keypair):
    harness = await make_harness()
    lines = agent.chat_lines(60)
    spec = placeholder_engine(agent, engine_sim.port)
    event = agent.batch_requested(
        batch_id=agent.new_batch_id(),
        input_file_id=await harness.upload(lines),
        target=agent.target_for(harness.ssh_host, pin=True),
        engine=spec,
    )
    # The dead agent had started the engine, finished 20 requests and stopped renewing.
    key = load_client_key(str(ssh_keypair.private_key_path))
    host = await connect(event.target, key, event.target.host_public_key, connect_timeout_seconds=5)
    try:
        await host.launch(plan_launch("ssh", event.batch_id, spec))
    finally:
        await host.close()
    # The launch returns before `sh -c` has exec'd the engine; wait for it to show up.
    await wait_until(lambda: len(agent.engine_pids(engine_sim.port)) == 1, 10)
    doc = batch_doc_from_event(event, utcnow())
    doc.update(
        status="in_progress",
        request_counts={"total": 60, "completed": 20, "failed": 0},
        lease_owner="dead-agent",
        lease_until=utcnow() - timedelta(seconds=1),
    )
    await harness.seed_finished(event.batch_id, lines, range(20))
    before = await agent.engine_request_count(engine_sim.url)
    assert await harness.store.insert_batch(doc, agent.accepted(event))
    harness.agent.runner.wake()
    batch = await harness.wait_terminal(event.batch_id)

    assert batch.status is BatchStatus.COMPLETED and batch.request_counts.completed == 60
    assert await agent.engine_request_count(engine_sim.url) - before == 40
    # The engine the dead agent left was reused and then stopped: no second one, none left.
    assert agent.engine_pids(engine_sim.port) == []
    output = await harness.read_file(batch.output_file_id)
    assert [line["custom_id"] for line in output] == [x["custom_id"] for x in lines]


async def test_ssh_drop_mid_run_resumes_without_losing_or_repeating(
    make_harness, agent, engine_sim_factory, sim_loop, ssh_keypair, tmp_path
):
    engine = engine_sim_factory(latency_ms=10)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    ssh = sim_loop.run(start_ssh_host("127.0.0.1", 0, [ssh_keypair.public_key], host_key, tmp_path))
    port = ssh.port
    harness = await make_harness(dispatch={"concurrency": 4}, ssh_ready_timeout_seconds=20)
    lines = agent.chat_lines(600)
    target = SshEndpoint(host="127.0.0.1", port=port, username=getpass.getuser())
    event = await harness.submit(lines, placeholder_engine(agent, engine.port), target=target)

    await harness.wait_results(event.batch_id, 50)
    sim_loop.run(ssh.close())  # The machine's sshd restarts; the engine keeps running.
    ssh = sim_loop.run(
        start_ssh_host("127.0.0.1", port, [ssh_keypair.public_key], host_key, tmp_path)
    )
    try:
        batch = await harness.wait_terminal(event.batch_id, within_seconds=90)
    finally:
        sim_loop.run(ssh.close())

    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (600, 0)
    # A dropped connection is not a crash: it must not count towards giving the batch up.
    assert batch.crash_count == 0
    output = await harness.read_file(batch.output_file_id)
    assert [line["custom_id"] for line in output] == [x["custom_id"] for x in lines]
    # Requests in flight when the tunnel broke may be answered twice; none is lost or doubled
    # in the output, and no more than one concurrency's worth is re-sent.
    assert 600 <= await agent.engine_request_count(engine.url) <= 600 + 4
    assert agent.engine_pids(engine.port) == []
