"""An engine that exits mid-batch (crash, OOM) is relaunched, and says why when it keeps dying
(issue 14).

Requests in flight when it died are not failed lines: they wait for the relaunched engine.
An engine that keeps exiting ends the batch `failed` with `engine_exited: <the engine's own
last error line>`, the finished lines kept in the output file.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from neobatch.common.contracts import BatchStatus
from neobatch.runtime_agent.engine.client import engine_dead_reply
from neobatch.runtime_agent.machine.engine_exit import EngineExitWatch

CRASH = "RuntimeError: CUDA error: an illegal memory access was encountered"


def _dies_after(agent, answers: int, *extra: str):
    args = ["--latency-ms", "20", "--exit-after", str(answers), *extra]
    return agent.sim_engine_spec(extra_args=args, ready_timeout=30)


def _exits(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.getMessage() == "engine exited mid-batch"]


async def test_an_engine_that_exits_once_is_relaunched_and_no_line_is_lost(
    make_harness, agent, caplog, tmp_path
):
    caplog.set_level(logging.INFO, logger="neobatch.runtime_agent")
    harness = await make_harness()
    lines = agent.chat_lines(60)
    spec = _dies_after(agent, 15, "--exit-once-file", str(tmp_path / "crashed"))
    event = await harness.submit(lines, spec)
    batch = await harness.wait_terminal(event.batch_id, within_seconds=90)

    assert batch.status is BatchStatus.COMPLETED, batch.error_message
    output = await harness.read_file(batch.output_file_id)
    errors = await harness.read_file(batch.error_file_id)
    # Every request exactly once, none failed because the engine died under it.
    assert errors == []
    assert Counter(r["custom_id"] for r in output) == Counter(r["custom_id"] for r in lines)
    assert batch.request_counts.completed == 60 and batch.request_counts.failed == 0
    # It died once (with its reason logged) and was started twice.
    [exited] = _exits(caplog)
    assert exited["engine_error"] == CRASH
    started = [
        r
        for r in caplog.records
        if r.getMessage() == "engine launched" and r.fields["how"] == "started"
    ]
    assert len(started) == 2


async def test_an_engine_that_keeps_exiting_fails_the_batch_with_its_reason(
    make_harness, agent, caplog
):
    caplog.set_level(logging.INFO, logger="neobatch.runtime_agent")
    harness = await make_harness()
    lines = agent.chat_lines(200)
    event = await harness.submit(lines, _dies_after(agent, 4))
    batch = await harness.wait_terminal(event.batch_id, within_seconds=90)

    assert batch.status is BatchStatus.FAILED
    assert batch.error_code == "engine_exited"
    assert batch.error_message.startswith(f"{CRASH} (")
    [(_subject, terminal)] = [
        e for e in await harness.events(event.batch_id) if e[0].endswith("terminal")
    ]
    assert terminal.error_code == "engine_exited"
    assert terminal.error_message == batch.error_message
    # What finished before it died is kept; every other line is in the error file, once.
    output = await harness.read_file(batch.output_file_id)
    errors = await harness.read_file(batch.error_file_id)
    assert output and all(r["response"]["status_code"] == 200 for r in output)
    assert {r["error"]["code"] for r in errors} == {"engine_exited"}
    every = Counter(r["custom_id"] for r in output + errors)
    assert every == Counter(r["custom_id"] for r in lines)
    assert len(_exits(caplog)) >= 2


async def test_a_check_begun_before_a_failure_does_not_clear_the_engine():
    """A request that failed while a check begun earlier (the engine still running then) was
    under way gets a fresh answer, not that stale one; checks in flight stay one at a time."""
    answers = iter([True, False])
    calls = 0
    gate = asyncio.Event()

    async def is_running() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()  # the first check is slow: the engine dies meanwhile
        return next(answers)

    watch = EngineExitWatch(is_running)
    early = asyncio.create_task(watch.confirm())
    await asyncio.sleep(0.01)
    late = [asyncio.create_task(watch.confirm()) for _ in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    assert await early is False  # its check began after it failed: the engine ran then
    assert await asyncio.gather(*late) == [True] * 5
    assert calls == 2 and watch.exited
    assert await watch.confirm() is True and calls == 2


async def test_an_engine_dead_500_is_an_engine_exit_not_failed_lines(
    make_harness, agent, caplog, tmp_path
):
    """vLLM whose engine core died under a live API server answers every request with a 500
    (`EngineDeadError`: "EngineCore encountered an issue...") and its /health with 503; with
    VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1 it never exits. That is the engine's death, not each
    line's failure: the dead server is stopped, a new one started, and no line is lost."""
    caplog.set_level(logging.INFO, logger="neobatch.runtime_agent")
    harness = await make_harness()
    lines = agent.chat_lines(60)
    once = str(tmp_path / "died")
    spec = _dies_after(agent, 15, "--exit-mode", "dead", "--exit-once-file", once)
    event = await harness.submit(lines, spec)
    batch = await harness.wait_terminal(event.batch_id, within_seconds=90)

    assert batch.status is BatchStatus.COMPLETED, batch.error_message
    output = await harness.read_file(batch.output_file_id)
    errors = await harness.read_file(batch.error_file_id)
    assert errors == []
    assert Counter(r["custom_id"] for r in output) == Counter(r["custom_id"] for r in lines)
    assert all(r["response"]["status_code"] == 200 for r in output)
    [exited] = _exits(caplog)
    assert exited["engine_error"] == CRASH
    started = [
        r
        for r in caplog.records
        if r.getMessage() == "engine launched" and r.fields["how"] == "started"
    ]
    assert len(started) == 2


# vLLM 0.32's answer once its engine core died (vllm_error.engine_error_handler).
VLLM_ENGINE_DEAD = (
    b'{"error":{"message":"EngineCore encountered an issue. See stack trace (above) for the '
    b'root cause.","type":"InternalServerError","param":null,"code":500}}'
)


def test_only_an_engine_dead_reply_counts_as_the_engine_dying():
    assert engine_dead_reply(500, VLLM_ENGINE_DEAD)
    # An ordinary 500 is the request's (retried, then its line fails); a 200 or a 400 that
    # quotes the words (a prompt, an echo) is an answer; so is a long body.
    other = b'{"error":{"message":"simulated engine failure","type":"InternalServerError"}}'
    assert not engine_dead_reply(500, other)
    assert not engine_dead_reply(200, VLLM_ENGINE_DEAD)
    assert not engine_dead_reply(400, VLLM_ENGINE_DEAD)
    assert not engine_dead_reply(500, VLLM_ENGINE_DEAD + b" " * 5000)
