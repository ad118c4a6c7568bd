"""machine.remote against the real loopback SSH host: launch, port-forward, health, stop, pinning."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import asyncssh
import msgspec
import pytest

from neobatch.common.batch_input import BatchRequest
from neobatch.runtime_agent.dispatch.policy import RetryPolicy
from neobatch.runtime_agent.engine.client import EngineClient
from neobatch.runtime_agent.machine.errors import HostKeyMismatch
from neobatch.runtime_agent.machine.launch import EngineLaunch, plan_launch, workdir
from neobatch.runtime_agent.machine.remote import connect, load_client_key
from neobatch.sim.engine import expected_body
from neobatch.sim.procs import is_running
from neobatch.sim.testing.waiting import wait_until


@pytest.fixture
def client_key(ssh_keypair):
    return load_client_key(str(ssh_keypair.private_key_path))


async def test_engine_launch_forward_health_and_stop(ssh_host, client_key, agent):
    spec = agent.sim_engine_spec()
    batch_id = agent.new_batch_id()
    # The asyncssh forward (http://); the OpenSSH one (unix:) has its own tests.
    host = await connect(
        agent.target_for(ssh_host),
        client_key,
        ssh_host.host_public_key,
        connect_timeout_seconds=10,
        tunnel="asyncssh",
    )
    launch = plan_launch("ssh", batch_id, spec)
    client = None
    try:
        pid, reused = await host.launch(launch)
        assert is_running(pid) and not reused
        # Relaunching finds the running engine through its pid file instead of a second one.
        assert await host.launch(launch) == (pid, True)
        base_url = await host.forward(spec.port)
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url != f"http://127.0.0.1:{spec.port}"
        client = EngineClient(
            base_url,
            batch_id=batch_id,
            served_model=spec.serving_name,
            concurrency=4,
            request_timeout_seconds=10,
            retry=RetryPolicy(max_retries=1),
        )
        await client.wait_ready("/health", 30)
        body = {"model": spec.serving_name, "messages": [{"role": "user", "content": "hi"}]}
        request = BatchRequest(
            line_index=0, custom_id="a", method="POST", url="/v1/chat/completions", body=body
        )
        result = await client.send(request)
        assert result.ok and result.status_code == 200
        assert msgspec.json.decode(result.body) == expected_body(request.url, body)
        assert result.request_id == f"{batch_id}-0"

        await host.stop(launch, grace_seconds=5)
        assert not is_running(pid)
        assert not await host.is_running(launch)
        assert not Path(workdir(batch_id), "pid").exists()
        await host.stop(launch, grace_seconds=5)  # Stopping twice is harmless.
    finally:
        if client is not None:
            await client.close()
        await host.close()


async def test_arguments_are_shell_quoted(ssh_host, client_key, agent, tmp_path):
    pwned = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    nasty = [f"'; touch {pwned}", f"$(touch {pwned})", f"`touch {pwned}`", f'" ; touch {pwned} #']
    out = tmp_path / "argv.json"
    script = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"
    argv = [sys.executable, "-c", script, str(out), *nasty]
    launch = EngineLaunch(agent.new_batch_id(), argv, port=0)
    host = await connect(
        agent.target_for(ssh_host), client_key, ssh_host.host_public_key, connect_timeout_seconds=10
    )
    try:
        await host.launch(launch)
        await wait_until(out.exists, 10, message="the command to write its arguments")
        await wait_until(lambda: out.read_text().endswith("]"), 5)
        assert msgspec.json.decode(out.read_bytes()) == nasty
        assert not pwned.exists()
    finally:
        await host.stop(launch, grace_seconds=2)
        await host.close()


async def test_trust_on_first_use_then_pinned(ssh_host, client_key, agent):
    target = agent.target_for(ssh_host)
    first = await connect(target, client_key, None, connect_timeout_seconds=10)
    seen = first.host_public_key
    await first.close()
    assert seen == ssh_host.host_public_key

    again = await connect(target, client_key, seen, connect_timeout_seconds=10)
    await again.close()

    other = asyncssh.generate_private_key("ssh-ed25519")
    wrong = " ".join(other.export_public_key("openssh").decode().split()[:2])
    with pytest.raises(HostKeyMismatch) as caught:
        await connect(target, client_key, wrong, connect_timeout_seconds=10)
    assert "does not match" in caught.value.message
