"""A pool machine is left clean after each batch (issue 13, finding 9).

SSH-pool machines are reused, and every batch used to leave `/tmp/neobatch/<batch>` behind
(298 directories were found on one machine). After a batch ends, its engine is stopped and its
work directory removed; removal touches only our own directory and never fails the batch.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import pytest

from neobatch.common.contracts import BatchStatus, SshEndpoint
from neobatch.runtime_agent.machine.errors import RemoteError
from neobatch.runtime_agent.machine.launch import WORK_ROOT, cleanup_script, workdir
from neobatch.runtime_agent.machine.remote import RemoteHost
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until


@pytest.mark.parametrize("ending", ["completed", "failed"])
async def test_the_work_directory_is_gone_after_a_batch(make_harness, agent, ending):
    harness = await make_harness()
    if ending == "completed":
        spec = agent.sim_engine_spec()
    else:  # the engine exits at once: the batch fails, its directory (and log) go all the same
        spec = agent.sim_engine_spec(ready_timeout=10)
        spec = type(spec)(
            **{
                **{f: getattr(spec, f) for f in spec.__struct_fields__},
                "command": [sys.executable, "-c", "raise SystemExit(3)"],
            }
        )
    event = await harness.submit(agent.chat_lines(20), spec)
    batch = await harness.wait_terminal(event.batch_id, within_seconds=90)
    assert batch.status.value == ending, (batch.error_code, batch.error_message)
    assert not Path(workdir(event.batch_id)).exists()
    assert agent.engine_pids(spec.port) == []


async def test_a_batch_moved_to_another_machine_leaves_nothing_on_the_old_one(make_harness, agent):
    """The lease is lost because the batch moved to a replacement machine: no later run will
    come back here, so the run that lost it stops the engine and removes the directory."""
    harness = await make_harness(ssh_ready_timeout_seconds=5.0)
    spec = agent.sim_engine_spec(extra_args=["--latency-ms", "200"])
    event = await harness.submit(agent.chat_lines(2000), spec)
    await harness.wait_results(event.batch_id, 5)
    assert Path(workdir(event.batch_id)).is_dir() and agent.engine_pids(spec.port)

    elsewhere = SshEndpoint(host="127.0.0.1", port=free_port(), username="replacement")
    moved = msgspec.structs.replace(event, provision_id="prov_replacement_2", target=elsewhere)
    await harness.agent.handlers.on_batch_requested(moved)

    def cleaned() -> bool:
        return not Path(workdir(event.batch_id)).exists() and not agent.engine_pids(spec.port)

    await wait_until(cleaned, 30, message="the old machine's engine and directory removed")
    batch = await harness.store.find_batch(event.batch_id)
    assert batch is not None and not batch.status.is_terminal  # it lives on, elsewhere


async def test_a_batch_taken_over_on_the_same_machine_keeps_its_engine(make_harness, agent, caplog):
    """The lease is lost but the batch stays on this machine: the new owner reuses the
    running engine (no relaunch), and the directory goes only when the batch ends."""
    caplog.set_level(logging.INFO, logger="neobatch.runtime_agent.machine.remote")
    harness = await make_harness()
    spec = agent.sim_engine_spec(extra_args=["--latency-ms", "100"])
    event = await harness.submit(agent.chat_lines(300), spec)
    await harness.wait_results(event.batch_id, 5)
    # Another run claims it (as after a lease expiry): ours loses the lease.
    await harness.db.batches.update_one(
        {"_id": event.batch_id}, {"$set": {"lease_owner": None, "lease_until": None}}
    )
    harness.agent.runner.wake()
    batch = await harness.wait_terminal(event.batch_id, within_seconds=90)
    assert batch.status is BatchStatus.COMPLETED and batch.request_counts.completed == 300
    assert agent.engine_pids(spec.port) == []
    assert not Path(workdir(event.batch_id)).exists()
    launches = [r.fields["how"] for r in caplog.records if r.getMessage() == "engine launched"]
    assert launches == ["started", "reused"]  # the new owner found the engine running


async def test_a_failed_cleanup_does_not_fail_the_batch(make_harness, agent, monkeypatch, caplog):
    async def broken(self, launch):
        raise RemoteError("remote command timed out after 15s")

    monkeypatch.setattr(RemoteHost, "remove_workdir", broken)
    harness = await make_harness()
    spec = agent.sim_engine_spec()
    event = await harness.submit(agent.chat_lines(10), spec)
    batch = await harness.wait_terminal(event.batch_id, within_seconds=90)
    assert batch.status is BatchStatus.COMPLETED
    assert batch.request_counts.completed == 10
    assert "work directory not removed" in caplog.text
    assert agent.engine_pids(spec.port) == []  # the engine was stopped all the same
    shutil.rmtree(workdir(event.batch_id), ignore_errors=True)


def _cleanup(batch_id: str) -> str:
    done = subprocess.run(
        ["sh", "-c", cleanup_script(batch_id)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_cleanup_removes_only_our_own_directory(tmp_path):
    batch_id = f"batch_{uuid.uuid4().hex}"
    path = Path(workdir(batch_id))
    os.makedirs(WORK_ROOT, exist_ok=True)
    assert _cleanup(batch_id) == "none"

    # A symlink planted where our directory would be: neither it nor its target is touched.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious")
    path.symlink_to(victim)
    try:
        assert _cleanup(batch_id) == "kept not-ours"
        assert (victim / "keep").read_text() == "precious" and path.is_symlink()
    finally:
        path.unlink()

    # Our directory with a live engine: kept (a later stop finds the engine by its pid file).
    path.mkdir(mode=0o700)
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        (path / "pid").write_text(f"{sleeper.pid}\n")
        assert _cleanup(batch_id) == "kept running"
        assert path.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    (path / "engine.log").write_text("a name with spaces and $(touch /tmp/pwned)\n")
    (path / "sub dir").mkdir()
    assert _cleanup(batch_id) == "removed"
    assert not path.exists()


def test_cleanup_refuses_an_unsafe_batch_id():
    for bad in ("..", "../etc", "a/b", "x; rm -rf /", "", "-rf"):
        with pytest.raises(ValueError):
            cleanup_script(bad)
