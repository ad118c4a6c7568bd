"""An engine that fails to start says why in the batch's error (issue 14).

The batch's `error_message` leads with the engine's own last error line (scrubbed, bounded),
read from its log before the batch ends; the log's tail goes to the agent's log; the work
directory (and the log with it) is gone once the batch is terminal.
"""

from __future__ import annotations

import logging
from pathlib import Path

from neobatch.common.contracts import BatchStatus
from neobatch.runtime_agent.machine.errors import RemoteError
from neobatch.runtime_agent.machine.launch import workdir
from neobatch.runtime_agent.machine.remote import RemoteHost

REASON = (
    "ValueError: Available memory on node 0 (9.4/13.59 GiB) on startup is less than desired "
    "CPU memory utilization (0.92, 12.5 GiB)"
)


def _dies_at_start(agent, reason: str):
    return agent.sim_engine_spec(extra_args=["--fail-at-start", reason], ready_timeout=30)


async def test_the_batch_error_is_the_engines_own_reason(make_harness, agent, caplog):
    caplog.set_level(logging.WARNING, logger="neobatch.runtime_agent.machine.session")
    harness = await make_harness()
    spec = _dies_at_start(agent, REASON)
    event = await harness.submit(agent.chat_lines(5), spec)
    batch = await harness.wait_terminal(event.batch_id, within_seconds=60)

    assert batch.status is BatchStatus.FAILED and batch.error_code == "engine_not_ready"
    assert batch.error_message == f"{REASON} (engine process exited before it became healthy)"
    [(_subject, terminal)] = [
        e for e in await harness.events(event.batch_id) if e[0].endswith("terminal")
    ]
    assert terminal.error_message == batch.error_message
    # The rest of the log went to the agent's log, and the directory is gone.
    [logged] = [r.fields for r in caplog.records if r.getMessage() == "engine not ready"]
    assert logged["engine_error"] == REASON
    assert "EngineCore failed to start." in logged["log_tail"]
    assert not Path(workdir(event.batch_id)).exists()


async def test_a_secret_in_the_engines_error_never_reaches_the_batch(make_harness, agent):
    harness = await make_harness()
    leaky = "OSError: cannot read s3://models?token=sk_live_abcdefghijklmnop " + "x" * 2000
    event = await harness.submit(agent.chat_lines(2), _dies_at_start(agent, leaky))
    batch = await harness.wait_terminal(event.batch_id, within_seconds=60)

    assert (batch.status, batch.error_code) == (BatchStatus.FAILED, "engine_not_ready"), batch
    assert batch.error_message.startswith("OSError: cannot read s3://models?token=[redacted] xxx")
    assert "sk_live" not in batch.error_message
    assert len(batch.error_message) < 400  # bounded, whatever the engine printed


async def test_an_unreadable_log_keeps_the_plain_failure(make_harness, agent, monkeypatch):
    async def unreadable(self, launch, max_bytes=2000):
        raise RemoteError("remote command timed out after 30s")

    monkeypatch.setattr(RemoteHost, "log_tail", unreadable)
    harness = await make_harness()
    event = await harness.submit(agent.chat_lines(2), _dies_at_start(agent, REASON))
    batch = await harness.wait_terminal(event.batch_id, within_seconds=60)

    assert batch.error_code == "engine_not_ready"
    assert batch.error_message == "engine process exited before it became healthy"
    assert not Path(workdir(event.batch_id)).exists()
