"""An engine answering oversize bodies (issue 13, finding 4): those lines fail, nothing else.

Before the cap, an engine answering 50 MB bodies drove the agent from 99 MB to 1.81 GB and
failed the whole batch (`DocumentTooLarge` in a checkpoint page). Now each oversize answer is
its line's `response_too_large` error in the error file, every other line completes, and the
batch completes. The job's `client.max_response_bytes` may lower the operator's cap, never
raise it.
"""

from __future__ import annotations

import msgspec
import pytest

from neobatch.common.contracts import BatchStatus, ClientSpec
from neobatch.sim.engine import expected_body, is_oversize

CHAT = "/v1/chat/completions"
N = 40
RATE = 0.25
OVERSIZE = 12 * 1024 * 1024


async def run_batch(harness, agent, transfer: str, client: ClientSpec | None = None):
    lines = agent.chat_lines(N)
    spec = agent.sim_engine_spec(
        extra_args=[
            "--oversize-rate",
            str(RATE),
            "--oversize-bytes",
            str(OVERSIZE),
            "--oversize-transfer",
            transfer,
        ]
    )
    event = agent.batch_requested(
        batch_id=agent.new_batch_id(),
        input_file_id=await harness.upload(lines),
        target=agent.target_for(harness.ssh_host),
        engine=spec,
    )
    if client is not None:
        event = msgspec.structs.replace(event, client=client)
    await harness.agent.handlers.on_batch_requested(event)
    batch = await harness.wait_terminal(event.batch_id, within_seconds=120)
    oversize = {line["custom_id"] for line in lines if is_oversize(CHAT, line["body"], RATE)}
    # The draw is fixed by the requests: make sure the case tests both kinds of line.
    assert 0 < len(oversize) < N
    return lines, batch, oversize


@pytest.mark.parametrize("transfer", ["length", "chunked"])
async def test_an_oversize_answer_fails_its_line_and_the_batch_completes(
    make_harness, agent, transfer
):
    harness = await make_harness(dispatch={"max_response_bytes": 1024 * 1024})
    lines, batch, oversize = await run_batch(harness, agent, transfer)

    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    assert batch.request_counts.completed == N - len(oversize)
    assert batch.request_counts.failed == len(oversize)
    errors = await harness.read_file(batch.error_file_id)
    assert {line["custom_id"] for line in errors} == oversize
    for line in errors:
        assert line["response"] is None
        assert line["error"]["code"] == "response_too_large"
        assert "1048576-byte limit" in line["error"]["message"]
    output = await harness.read_file(batch.output_file_id)
    by_id = {line["custom_id"]: line for line in output}
    assert set(by_id) == {line["custom_id"] for line in lines} - oversize
    for source in lines:
        if source["custom_id"] in by_id:
            body = by_id[source["custom_id"]]["response"]["body"]
            assert body == expected_body(CHAT, source["body"])


async def test_the_job_may_lower_the_cap_but_not_raise_it(make_harness, agent):
    # The operator allows 1 MiB; the job asks for 16 MiB (more than the 12 MiB answers):
    # the operator's cap holds, so the oversize lines still fail.
    harness = await make_harness(dispatch={"max_response_bytes": 1024 * 1024})
    _, batch, oversize = await run_batch(
        harness, agent, "length", ClientSpec(max_response_bytes=16 * 1024 * 1024)
    )
    assert batch.status is BatchStatus.COMPLETED
    assert batch.request_counts.failed == len(oversize)

    # The operator allows the default 4 MiB... and the job lowers it to 2 KiB: every answer
    # (a few hundred bytes) still fits, the oversize ones do not.
    harness = await make_harness()
    _, batch, oversize = await run_batch(
        harness, agent, "chunked", ClientSpec(max_response_bytes=2048)
    )
    assert batch.status is BatchStatus.COMPLETED
    errors = await harness.read_file(batch.error_file_id)
    assert {line["custom_id"] for line in errors} == oversize
    assert all("2048-byte limit" in line["error"]["message"] for line in errors)


def test_a_checkpoint_page_stays_under_the_document_limit_whatever_the_results():
    """The backstop behind the cap: 20 MB bodies (past any cap) and many 3 MB ones."""
    from datetime import UTC, datetime

    import bson

    from neobatch.runtime_agent.dispatch.tally import RequestResult
    from neobatch.runtime_agent.results.pages import RESULTS_DECODER, build_pages

    def result(i: int, size: int) -> RequestResult:
        body = b'"' + b"x" * (size - 2) + b'"'
        return RequestResult(line_index=i, custom_id=f"r{i}", status_code=200, body=body)

    results = [result(0, 20 * 1024 * 1024), *(result(i, 3 * 1024 * 1024) for i in range(1, 12))]
    pages = build_pages("batch_x", results, datetime.now(UTC))
    assert all(len(bson.encode(page)) < 16 * 1024 * 1024 for page in pages)
    stored = [r for page in pages for r in RESULTS_DECODER.decode(page["results"])]
    assert [r.line_index for r in stored] == list(range(12))
    assert stored[0].error_code == "response_too_large" and stored[0].body is None
    assert all(r.ok and len(r.body or b"") == 3 * 1024 * 1024 for r in stored[1:])
