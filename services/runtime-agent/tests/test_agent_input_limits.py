"""The agent re-checks OpenAI's per-batch limits before it reaches the machine."""

from __future__ import annotations

from pathlib import Path

from neobatch.common.batch_input import MAX_REQUESTS
from neobatch.common.contracts import BatchStatus
from neobatch.runtime_agent.machine.launch import workdir


async def test_a_batch_of_50001_requests_fails_and_reaches_no_machine(make_harness, agent):
    harness = await make_harness()
    lines = [b""] + [_line(i) for i in range(MAX_REQUESTS + 1)]  # a blank first line
    event = await harness.submit(lines, agent.sim_engine_spec())
    batch = await harness.wait_terminal(event.batch_id, within_seconds=120)

    assert batch.status is BatchStatus.FAILED and batch.error_code == "invalid_input_file"
    assert [(e["line"], e["code"]) for e in batch.errors] == [
        (MAX_REQUESTS + 2, "too_many_requests")
    ]
    assert f"line {MAX_REQUESTS + 2}" in batch.error_message
    assert not Path(workdir(event.batch_id)).exists()
    assert await harness.store.finished_lines(event.batch_id) == set()


def _line(i: int) -> bytes:
    return (
        b'{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions",'
        b'"body":{"model":"sim-model","messages":[{"role":"user","content":"hi"}]}}' % i
    )
