"""Runtime targets on a real loopback SSH host that carries the simulated machine tools
(`neobatch.sim.machine_tools`: `vllm`, `sudo`, `docker`), then whole batches through the agent:
RunPod's `vllm serve`, Lambda's `sudo docker run`, a machine without Docker or the NVIDIA
runtime, a dropped connection re-established in place, and a host key that changes.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import msgspec
import pytest

from neobatch.common.contracts import (
    BatchCancelRequested,
    BatchRequested,
    BatchStatus,
    EngineSpec,
    SshEndpoint,
)
from neobatch.runtime_agent.machine.errors import EngineLaunchFailed
from neobatch.runtime_agent.machine.launch import plan_launch
from neobatch.runtime_agent.machine.remote import RemoteHost, connect, load_client_key
from neobatch.sim import machine_tools
from neobatch.sim.procs import live_pids
from neobatch.sim.ssh_host import SSHHost, start_ssh_host
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until

MODEL = "sim-model"

NEEDS_SSH = pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client (ssh)")
TUNNELS = ["asyncssh", pytest.param("openssh", marks=NEEDS_SSH)]


def ssh_tunnel_pids(engine_port: int) -> list[int]:
    """Running `ssh -N -L <socket>:127.0.0.1:<engine_port>` processes (the agent's tunnels)."""
    return live_pids(b"\0-N\0", f":127.0.0.1:{engine_port}\0".encode())


@dataclass
class Machine:
    ssh: SSHHost
    workdir: Path
    records: Path
    host_key: asyncssh.SSHKey

    @property
    def target(self) -> SshEndpoint:
        return SshEndpoint(host=self.ssh.host, port=self.ssh.port, username=getpass.getuser())

    def commands(self, tool: str) -> list[list[str]]:
        return [r["argv"] for r in machine_tools.read_records(self.records) if r["tool"] == tool]

    def serves(self) -> list[list[str]]:
        return [argv for argv in self.commands("vllm") if argv[1:2] == ["serve"]]

    def docker_runs(self) -> list[list[str]]:
        return [argv for argv in self.commands("docker") if argv[1:2] == ["run"]]

    def containers(self) -> list[str]:
        return sorted(p.stem for p in (self.workdir / ".sim" / "containers").glob("*.json"))


@pytest.fixture
def make_machine(sim_loop, ssh_keypair, tmp_path) -> Iterator[Any]:
    """`make_machine(docker=, nvidia=, engine_args=)`: a loopback SSH host with the GPU tools."""
    made: list[Machine] = []

    def make(*, docker: bool = True, nvidia: bool = True, engine_args: tuple = ()) -> Machine:
        workdir = tmp_path / f"machine-{len(made)}"
        workdir.mkdir()
        records = tmp_path / f"commands-{len(made)}.jsonl"
        machine_tools.install(
            workdir,
            machine=workdir.name,
            records=records,
            docker=docker,
            nvidia=nvidia,
            engine_args=list(engine_args),
        )
        key = asyncssh.generate_private_key("ssh-ed25519")
        env = machine_tools.machine_env(workdir)
        ssh = sim_loop.run(
            start_ssh_host("127.0.0.1", 0, [ssh_keypair.public_key], key, workdir, env=env)
        )
        machine = Machine(ssh, workdir, records, key)
        made.append(machine)
        return machine

    try:
        yield make
    finally:
        for machine in made:
            sim_loop.run(machine.ssh.close())
            machine_tools.kill_machine_processes(machine.workdir)


@pytest.fixture
def client_key(ssh_keypair):
    return load_client_key(str(ssh_keypair.private_key_path))


def engine_spec(**overrides: Any) -> EngineSpec:
    fields: dict[str, Any] = {
        "serving_name": MODEL,
        "model_uri": "org/sim-model",
        "port": free_port(),
        "ready_timeout_seconds": 30.0,
    }
    return EngineSpec(**{**fields, **overrides})


async def served_models(host: RemoteHost, port: int) -> list[str]:
    base_url = await host.forward(port)
    # Either forward: an OpenSSH unix socket (`unix:/path`) or asyncssh's TCP port.
    if base_url.startswith("unix:"):
        path, url = base_url.removeprefix("unix:"), "http://engine/v1/models"
    else:
        path, url = None, f"{base_url}/v1/models"

    async def models() -> list[str] | None:
        connector = aiohttp.UnixConnector(path=path) if path else None
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(url) as resp,
            ):
                if resp.status == 200:
                    return [m["id"] for m in (await resp.json())["data"]]
        except aiohttp.ClientError:
            return None
        return None

    return await wait_until(models, 20, message="the engine to answer through the forward")


# --- RemoteHost on a machine with the tools -----------------------------------------------


@pytest.mark.parametrize("runtime", ["runpod", "lambdaCloud"])
async def test_shell_metacharacters_reach_the_engine_as_data(
    make_machine, client_key, agent, runtime
) -> None:
    machine = make_machine()
    pwned = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    name = f"m'; touch {pwned}; echo '"
    args = ["--chat-template", f"$(touch {pwned})", "--x", f'`touch {pwned}` "; touch {pwned}']
    spec = engine_spec(serving_name=name, serve_args=args, image="vllm/vllm-openai:v0.9.1")
    launch = plan_launch(runtime, agent.new_batch_id(), spec)
    host = await connect(
        machine.target, client_key, machine.ssh.host_public_key, connect_timeout_seconds=10
    )
    try:
        pid, reused = await host.launch(launch)
        assert not reused and pid > 0
        # The engine got the literal name: it serves a model called exactly that.
        assert await served_models(host, spec.port) == [name]
        if runtime == "runpod":
            assert machine.serves() == [launch.argv]
        else:
            run = machine.docker_runs()
            assert len(run) == 1 and run[0][-len(launch.argv) :] == launch.argv
            assert run[0][:12] == [
                "docker", "run", "-d", "--name", launch.container, "--gpus", "all",
                "--ipc=host", "-p", f"127.0.0.1:{spec.port}:8000", "vllm/vllm-openai:v0.9.1",
                "--model",
            ]  # fmt: skip
        assert not pwned.exists()
    finally:
        await host.stop(launch, grace_seconds=2)
        await host.close()
    assert not pwned.exists()


async def test_docker_launch_is_idempotent_and_stop_removes_the_container(
    make_machine, client_key, agent
) -> None:
    machine = make_machine()
    spec = engine_spec()
    launch = plan_launch("lambdaCloud", agent.new_batch_id(), spec)
    host = await connect(
        machine.target, client_key, machine.ssh.host_public_key, connect_timeout_seconds=10
    )
    try:
        pid, reused = await host.launch(launch)
        assert (await host.launch(launch)) == (pid, True)  # found running: not a second one
        assert len(machine.docker_runs()) == 1
        assert await host.is_running(launch)
        assert await served_models(host, spec.port) == [MODEL]
        assert "engine sim listening" in await host.log_tail(launch)
        assert machine.containers() == [launch.container]

        await host.stop(launch, grace_seconds=2)
        assert machine.containers() == []
        assert not await host.is_running(launch)
        assert agent.engine_pids(spec.port) == []
        await host.stop(launch, grace_seconds=2)  # stopping twice is harmless

        # A container that died is replaced (rm -f, run again), not reported as running.
        pid, _ = await host.launch(launch)
        machine_tools.kill_machine_processes(machine.workdir)
        await wait_until(lambda: agent.engine_pids(spec.port) == [], 10)
        assert not await host.is_running(launch)
        new_pid, reused = await host.launch(launch)
        assert not reused and new_pid != pid and len(machine.docker_runs()) == 3
    finally:
        await host.stop(launch, grace_seconds=2)
        await host.close()


@pytest.mark.parametrize(
    ("docker", "nvidia", "message"),
    [
        (False, False, "docker is not installed on the machine"),
        (True, False, "the NVIDIA container runtime is missing"),
    ],
)
async def test_docker_or_nvidia_runtime_missing_is_a_clear_launch_failure(
    make_machine, client_key, agent, docker, nvidia, message
) -> None:
    machine = make_machine(docker=docker, nvidia=nvidia)
    launch = plan_launch("lambdaCloud", agent.new_batch_id(), engine_spec())
    host = await connect(
        machine.target, client_key, machine.ssh.host_public_key, connect_timeout_seconds=10
    )
    try:
        with pytest.raises(EngineLaunchFailed) as caught:
            await host.launch(launch)
        assert caught.value.code == "engine_launch_failed"
        assert caught.value.message.startswith(message)
        assert machine.docker_runs() == []
        await host.stop(launch, grace_seconds=1)  # nothing to stop: not an error
    finally:
        await host.close()


# --- whole batches through the agent ----------------------------------------------------------


async def submit(harness, agent, machine: Machine, runtime: str, spec: EngineSpec, n: int):
    event = agent.batch_requested(
        batch_id=agent.new_batch_id(),
        input_file_id=await harness.upload(agent.chat_lines(n)),
        target=machine.target,
        engine=spec,
    )
    event = msgspec.structs.replace(event, runtime=runtime)
    await harness.agent.handlers.on_batch_requested(event)
    return event


async def test_lambda_batch_runs_in_docker_and_removes_its_container(
    make_harness, agent, make_machine
) -> None:
    machine = make_machine()
    harness = await make_harness()
    spec = engine_spec(image="vllm/vllm-openai:v0.9.1", engine_args={"max_num_seqs": 8})
    event = await submit(harness, agent, machine, "lambdaCloud", spec, 30)
    batch = await harness.wait_terminal(event.batch_id)
    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    assert batch.request_counts.completed == 30
    (run,) = machine.docker_runs()
    assert run[run.index("--max-num-seqs") + 1] == "8"
    assert machine.containers() == []  # stopped and removed at the end
    assert agent.engine_pids(spec.port) == []


async def test_lambda_batch_without_docker_fails_with_launch_code(
    make_harness, agent, make_machine
) -> None:
    machine = make_machine(docker=False)
    harness = await make_harness()
    event = await submit(harness, agent, machine, "lambdaCloud", engine_spec(), 3)
    batch = await harness.wait_terminal(event.batch_id)
    assert batch.status is BatchStatus.FAILED
    assert batch.error_code == "engine_launch_failed"
    assert batch.error_message == "docker is not installed on the machine"


async def dispatching(
    make_harness: Any, agent: Any, make_machine: Any, caplog: Any, ssh_tunnel: str
) -> tuple[Machine, Any, BatchRequested, list[dict[str, Any]], EngineSpec]:
    """A 400-request RunPod batch over `ssh_tunnel`, once its first 50 results are stored."""
    machine = make_machine(engine_args=("--latency-ms", "10"))
    harness = await make_harness(
        dispatch={"concurrency": 4}, ssh_ready_timeout_seconds=20, ssh_tunnel=ssh_tunnel
    )
    lines = agent.chat_lines(400)
    spec = engine_spec(ready_timeout_seconds=15.0)
    caplog.set_level(logging.INFO, logger="neobatch.runtime_agent")
    event = await submit(harness, agent, machine, "runpod", spec, len(lines))
    await harness.wait_results(event.batch_id, 50, within_seconds=20)
    return machine, harness, event, lines, spec


@pytest.mark.parametrize("ssh_tunnel", TUNNELS)
async def test_dropped_connection_is_reestablished_in_place_without_relaunch(
    make_harness, agent, make_machine, sim_loop, caplog, ssh_tunnel
) -> None:
    machine, harness, event, lines, spec = await dispatching(
        make_harness, agent, make_machine, caplog, ssh_tunnel
    )
    pids = agent.engine_pids(spec.port)
    tunnels = ssh_tunnel_pids(spec.port)
    assert len(tunnels) == (1 if ssh_tunnel == "openssh" else 0)
    # A blip: sshd keeps listening; the control connection (and ssh's, if any) drop.
    assert sim_loop.run(machine.ssh.drop_connections()) >= len(tunnels) + 1
    done_at_drop = len(await harness.store.finished_lines(event.batch_id))
    batch = await harness.wait_terminal(event.batch_id, within_seconds=60)

    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    assert done_at_drop < len(lines)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(lines), 0)
    output = await harness.read_file(batch.output_file_id)
    assert [line["custom_id"] for line in output] == [x["custom_id"] for x in lines]
    # Launched once: the reconnect found the engine running (same process) and reused it.
    assert len(machine.serves()) == 1
    assert pids and len(pids) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "ssh connection dropped mid-dispatch; reconnecting in place" in messages
    assert "machine unreachable; will resume" not in messages  # not the re-claim path
    assert batch.crash_count == 0
    assert agent.engine_pids(spec.port) == []  # stopped at the end
    # Every tunnel closed and reaped: the run closes its session just after the terminal write.
    await wait_until(lambda: ssh_tunnel_pids(spec.port) == [], 10, message="tunnels to close")


@pytest.mark.parametrize("ssh_tunnel", [pytest.param("openssh", marks=NEEDS_SSH)])
async def test_a_dead_tunnel_process_is_replaced_in_place(
    make_harness, agent, make_machine, caplog, ssh_tunnel
) -> None:
    """Only the ssh subprocess dies (the control connection lives): a fresh tunnel, same engine."""
    machine, harness, event, lines, spec = await dispatching(
        make_harness, agent, make_machine, caplog, ssh_tunnel
    )
    (killed,) = ssh_tunnel_pids(spec.port)
    os.kill(killed, signal.SIGKILL)
    batch = await harness.wait_terminal(event.batch_id, within_seconds=60)

    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(lines), 0)
    messages = [r.getMessage() for r in caplog.records]
    assert "ssh connection dropped mid-dispatch; reconnecting in place" in messages
    assert messages.count("ssh tunnel ready") == 2  # the first one and its replacement
    assert len(machine.serves()) == 1  # the engine was reused, not relaunched
    assert batch.crash_count == 0
    # The run closes its session (and tunnel) just after the terminal write.
    await wait_until(lambda: ssh_tunnel_pids(spec.port) == [], 10, message="tunnels to close")
    assert not Path(f"/proc/{killed}").exists()  # reaped, no zombie


async def test_changed_host_key_on_reconnect_fails_the_batch(
    make_harness, agent, make_machine, sim_loop, ssh_keypair
) -> None:
    machine = make_machine(engine_args=("--latency-ms", "10"))
    harness = await make_harness(dispatch={"concurrency": 4}, ssh_ready_timeout_seconds=20)
    spec = engine_spec()
    event = await submit(harness, agent, machine, "runpod", spec, 800)

    await harness.wait_results(event.batch_id, 20)
    stored = await harness.store.find_batch(event.batch_id)
    assert stored is not None and stored.host_public_key == machine.ssh.host_public_key
    # Another machine answers at the same address: a different host key.
    port = machine.ssh.port
    sim_loop.run(machine.ssh.close())
    impostor_key = asyncssh.generate_private_key("ssh-ed25519")
    env = machine_tools.machine_env(machine.workdir)
    machine.ssh = sim_loop.run(
        start_ssh_host(
            "127.0.0.1", port, [ssh_keypair.public_key], impostor_key, machine.workdir, env=env
        )
    )
    batch = await harness.wait_terminal(event.batch_id, within_seconds=30)
    assert batch.status is BatchStatus.FAILED
    assert batch.error_code == "host_key_mismatch"
    assert "does not match the pinned key" in batch.error_message
    assert 0 < batch.request_counts.completed < 800  # finished work kept in the output
    assert batch.crash_count == 0
    assert len(machine.serves()) == 1  # never relaunched on the impostor


async def test_reconnect_wait_ends_when_the_batch_moves_to_a_replacement(
    make_harness, agent, make_machine, sim_loop
) -> None:
    lost = make_machine(engine_args=("--latency-ms", "10"))
    # A long reconnect deadline: the move to the replacement must not wait for it.
    harness = await make_harness(dispatch={"concurrency": 4}, ssh_ready_timeout_seconds=120)
    spec = engine_spec()
    event = await submit(harness, agent, lost, "runpod", spec, 400)

    await harness.wait_results(event.batch_id, 20)
    sim_loop.run(lost.ssh.close())  # the machine is gone, and its engine with it
    machine_tools.kill_machine_processes(lost.workdir)
    replacement = make_machine(engine_args=("--latency-ms", "10"))
    moved = msgspec.structs.replace(
        event, provision_id=f"prov_{uuid.uuid4().hex}", target=replacement.target
    )
    await harness.agent.handlers.on_batch_requested(moved)
    batch = await harness.wait_terminal(event.batch_id, within_seconds=40)

    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    assert batch.request_counts.completed == 400
    assert len(replacement.serves()) == 1
    assert agent.engine_pids(spec.port) == []


async def test_lambda_container_is_removed_on_cancel(make_harness, agent, make_machine) -> None:
    machine = make_machine(engine_args=("--latency-ms", "10"))
    harness = await make_harness(dispatch={"concurrency": 4})
    spec = engine_spec(image="vllm/vllm-openai:v0.9.1")
    event = await submit(harness, agent, machine, "lambdaCloud", spec, 2000)

    await harness.wait_results(event.batch_id, 20)
    assert machine.containers() == [f"neobatch-{event.batch_id}"]
    cancel = BatchCancelRequested(batch_id=event.batch_id, job_id=event.job_id)
    await harness.agent.handlers.on_batch_cancel_requested(cancel)
    batch = await harness.wait_terminal(event.batch_id)
    assert batch.status is BatchStatus.CANCELLED
    assert 20 <= batch.request_counts.completed < 2000
    assert machine.containers() == []
    assert agent.engine_pids(spec.port) == []


async def test_lambda_container_is_removed_when_the_engine_never_gets_ready(
    make_harness, agent, make_machine
) -> None:
    machine = make_machine(engine_args=("--startup-delay-seconds", "60"))
    harness = await make_harness()
    spec = engine_spec(image="vllm/vllm-openai:v0.9.1", ready_timeout_seconds=1.0)
    event = await submit(harness, agent, machine, "lambdaCloud", spec, 3)
    batch = await harness.wait_terminal(event.batch_id)
    assert batch.status is BatchStatus.FAILED
    assert batch.error_code == "engine_not_ready"
    assert len(machine.docker_runs()) == 1
    assert machine.containers() == []
    assert agent.engine_pids(spec.port) == []
