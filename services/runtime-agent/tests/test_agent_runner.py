"""The runner end to end: real SecantusDB/Mongo, real SSH host, real engine simulator."""

from __future__ import annotations

import sys

from neobatch.common.contracts import BatchStatus, Usage
from neobatch.runtime_agent.results.output_files import file_ids
from neobatch.sim.engine import compute_response, expected_body

CHAT = "/v1/chat/completions"
N = 1000


async def test_batch_runs_to_completed(make_harness, agent, ssh_host):
    harness = await make_harness(dispatch={"concurrency": 64})
    lines = agent.chat_lines(N)
    spec = agent.sim_engine_spec()
    event = await harness.submit(lines, spec)
    batch = await harness.wait_terminal(event.batch_id, within_seconds=120)

    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    assert (batch.request_counts.total, batch.request_counts.completed) == (N, N)
    assert batch.request_counts.failed == 0
    assert (batch.output_file_id, batch.error_file_id) == (file_ids(event.batch_id)[0], None)
    assert batch.lease_owner is None
    # Trust on first use: the host key seen on the first connection is now pinned.
    assert batch.host_public_key == ssh_host.host_public_key

    output = await harness.read_file(batch.output_file_id)
    assert [line["custom_id"] for line in output] == [line["custom_id"] for line in lines]
    for index, (line, source) in enumerate(zip(output, lines, strict=True)):
        assert line["error"] is None and line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 200
        assert line["response"]["request_id"] == f"{event.batch_id}-{index}"
        assert line["response"]["body"] == expected_body(CHAT, source["body"])

    assert await harness.store.finished_lines(event.batch_id) == set(range(N))

    events = await harness.events(event.batch_id)
    statuses = [e.status for subject, e in events if subject == "batch.status"]
    # Accepted (validating) as soon as the batch is stored, then in progress once validated.
    assert statuses[:2] == [BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS]
    assert statuses[-1] is BatchStatus.FINALIZING
    assert events[1][1].request_counts.total == N
    [terminal] = [e for s, e in events if s == "batch.terminal"]
    assert terminal.status is BatchStatus.COMPLETED and terminal.request_counts.completed == N
    assert terminal.output_file_id == batch.output_file_id and events[-1][0] == "batch.terminal"
    # Usage is the sum over the successful responses, as the output file shows them.
    prompt = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    completion = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)
    assert terminal.usage == Usage(prompt, completion, prompt + completion) and prompt > 0
    # When dispatch began and ended (the bill's idle time) go with the end, in order.
    started, ended = terminal.dispatch_started_at, terminal.dispatch_ended_at
    assert started is not None and ended is not None and started < ended
    assert (ended - started).total_seconds() <= batch.dispatch_seconds + 1

    assert agent.engine_pids(spec.port) == []
    # The run records how long it dispatched (engine start-up excluded) with the batch's end.
    assert batch.dispatch_seconds > 0
    rate = N / batch.dispatch_seconds
    print(f"\nrunner throughput: {N} requests in {batch.dispatch_seconds:.2f}s = {rate:.0f} req/s")


async def test_resume_skips_finished_requests(make_harness, agent, engine_sim):
    harness = await make_harness()
    lines = agent.chat_lines(100)
    # The engine answers in-process (so its counters outlive the run); the "engine process"
    # the agent launches and stops is a stand-in holding the place of the real one.
    spec = agent.sim_engine_spec(port=engine_sim.port)
    spec = type(spec)(**{**_fields(spec), "command": [sys.executable, "-c", _SLEEP]})
    event = agent.batch_requested(
        batch_id=agent.new_batch_id(),
        input_file_id=await harness.upload(lines),
        target=agent.target_for(harness.ssh_host),
        engine=spec,
    )
    done = range(0, 100, 3)  # A previous owner finished every third request.
    await harness.seed_finished(event.batch_id, lines, done)
    before = await agent.engine_request_count(engine_sim.url)
    await harness.agent.handlers.on_batch_requested(event)
    batch = await harness.wait_terminal(event.batch_id)

    assert batch.status is BatchStatus.COMPLETED
    assert batch.request_counts.completed == 100
    sent = await agent.engine_request_count(engine_sim.url) - before
    assert sent == 100 - len(done)
    output = await harness.read_file(batch.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(x["custom_id"] for x in lines)
    assert all(
        line["response"]["body"] == expected_body(CHAT, src["body"])
        for line, src in zip(output, lines, strict=True)
    )


async def test_failed_requests_go_to_the_error_file(make_harness, agent, engine_sim_factory):
    rate = 0.3
    engine = engine_sim_factory(failure_rate=rate)
    harness = await make_harness(dispatch={"max_retries": 1})
    lines = agent.chat_lines(200)
    spec = agent.sim_engine_spec(port=engine.port)
    spec = type(spec)(**{**_fields(spec), "command": [sys.executable, "-c", _SLEEP]})
    event = await harness.submit(lines, spec)
    batch = await harness.wait_terminal(event.batch_id)

    failing = {
        x["custom_id"]
        for x in lines
        if compute_response(CHAT, x["body"], served_model=engine.model, failure_rate=rate).status
        == 500
    }
    assert 0 < len(failing) < len(lines)
    assert batch.status is BatchStatus.COMPLETED
    counts = batch.request_counts
    assert (counts.completed, counts.failed) == (len(lines) - len(failing), len(failing))
    errors = await harness.read_file(batch.error_file_id)
    assert {line["custom_id"] for line in errors} == failing
    for line in errors:
        assert line["response"]["status_code"] == 500 and line["error"] is None
        assert line["response"]["body"]["error"]["message"] == "simulated engine failure"
    output = await harness.read_file(batch.output_file_id)
    assert {line["custom_id"] for line in output} == {x["custom_id"] for x in lines} - failing
    # Each failing request was tried twice (one retry), each good one once.
    assert await agent.engine_request_count(engine.url, 500) == 2 * len(failing)


# A placeholder engine process: waits to be stopped, like a real engine would.
_SLEEP = "import time; time.sleep(3600)"


def _fields(spec):
    return {f: getattr(spec, f) for f in spec.__struct_fields__}
