"""Start and stop the parts of the stack that need no services: nats-server, SecantusDB, SSH host."""

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from neobatch.sim.devstack.layout import (
    DEV_API_KEY,
    DEV_OPERATOR_KEY,
    Ports,
    RunLayout,
    StackError,
    current_user,
    read_env_file,
)
from neobatch.sim.devstack.processes import marked_pids
from neobatch.sim.devstack.stack import Stack, start_stack
from neobatch.sim.procs import is_running

INFRA = ("nats", "mongo", "ssh-host")


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Shared by the tests that only look at a running stack; starting one takes a few seconds.
    with start_stack(
        tmp_path_factory.mktemp("devstack") / "run", Ports.free(), services=()
    ) as stack:
        yield stack


def _cli(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEOBATCH_RUN_DIR": str(run_dir)}
    return subprocess.run(
        [sys.executable, "-m", "neobatch.sim.devstack", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _ssh_run(stack: Stack, command: str) -> str:
    async def run() -> str:
        async with asyncssh.connect(
            "127.0.0.1",
            stack.ports.ssh,
            username=current_user(),
            client_keys=[str(stack.layout.client_key)],
            known_hosts=None,
        ) as conn:
            result = await conn.run(command, check=True)
            return str(result.stdout)

    return asyncio.run(run())


def test_start_records_pids_keys_and_urls(infra: Stack) -> None:
    layout = infra.layout
    assert list(infra.processes) == list(INFRA)
    for name, handle in infra.processes.items():
        assert handle.alive(), name
        assert layout.pid_file(name).read_text().strip() == str(handle.pid)
        assert layout.log_file(name).exists()
    assert stat.S_IMODE(layout.client_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(layout.host_key.stat().st_mode) == 0o600
    assert layout.client_public_key.read_text().startswith("ssh-ed25519 ")
    recorded = read_env_file(layout.stack_env)
    assert recorded["NEOBATCH_CONSOLE_URL"] == f"http://127.0.0.1:{infra.ports.console}"
    assert recorded["NEOBATCH_API_KEY"] == DEV_API_KEY
    assert recorded["NEOBATCH_OPERATOR_KEY"] == DEV_OPERATOR_KEY
    assert recorded["NATS_URL"] == infra.nats_url
    assert infra.nats_url.endswith(f"@127.0.0.1:{infra.ports.nats}")
    assert recorded["MONGO_URL"] == f"mongodb://127.0.0.1:{infra.ports.mongo}"
    assert recorded["NEOBATCH_SSH_POOL"] == f"{current_user()}@127.0.0.1:{infra.ports.ssh}"
    assert recorded["NEOBATCH_SSH_KEY_FILE"] == str(layout.client_key)
    # The SSH host accepts the generated key; storage is on disk, not :memory:.
    assert _ssh_run(infra, "echo hello").strip() == "hello"
    assert layout.mongo_storage.is_dir()


def test_cli_status_and_second_up_adopt_running_components(infra: Stack) -> None:
    out = _cli(infra.run_dir, "status")
    assert out.returncode == 0, out.stderr
    table = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:-2]}
    for name in INFRA:
        assert table[name][1:] == [
            str(infra.processes[name].pid),
            "yes",
            str(infra.ports.for_component(name)),
        ]
    assert table["console"][2] == "no"

    again = start_stack(infra.run_dir, infra.ports, services=(), adopt_running=True)
    assert {name: h.pid for name, h in again.processes.items()} == {
        name: h.pid for name, h in infra.processes.items()
    }


def test_second_up_with_other_ports_is_refused(infra: Stack) -> None:
    other = Ports(nats=infra.ports.nats + 1, mongo=infra.ports.mongo, ssh=infra.ports.ssh)
    with pytest.raises(StackError, match=r"already running .* run `\./task down` first"):
        start_stack(infra.run_dir, other, services=(), adopt_running=True)


def test_cli_down_stops_everything_including_detached_commands(tmp_path: Path) -> None:
    stack = start_stack(tmp_path / "run", Ports.free(), services=())
    layout = RunLayout(stack.run_dir)
    pids = {name: handle.pid for name, handle in stack.processes.items()}
    try:
        # Like an engine the runtime-agent detaches: its own session, so no group kill reaches it.
        detached = int(_ssh_run(stack, "setsid sleep 300 >/dev/null 2>&1 & echo $!").strip())
        assert detached in marked_pids(stack.run_dir)

        out = _cli(stack.run_dir, "down")
        assert out.returncode == 0, out.stderr
        for name in INFRA:
            assert f"stopped {name}" in out.stdout
        assert f"stopped leftover process {detached}" in out.stdout
        for pid in [*pids.values(), detached]:
            assert not is_running(pid)
        assert not list(layout.pids.iterdir())
        assert not layout.stack_env.exists()
        assert not marked_pids(stack.run_dir)
    finally:
        stack.stop()


def test_run_files_are_private_to_the_user(tmp_path: Path) -> None:
    """stack.env holds the dev key and .run/mongo every tenant's data: no other user reads them.

    Started under the usual umask 022, over a run dir an earlier version left world-readable.
    """
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    os.chmod(run_dir, 0o755)
    old_umask = os.umask(0o022)
    try:
        stack = start_stack(run_dir, Ports.free(), services=())
    finally:
        os.umask(old_umask)
    try:
        layout = stack.layout

        def mode(path: Path) -> int:
            return stat.S_IMODE(path.stat().st_mode)

        assert mode(layout.root) == 0o700
        assert mode(layout.stack_env) == 0o600
        assert DEV_API_KEY in layout.stack_env.read_text()
        assert mode(layout.mongo_storage) == 0o700
        assert mode(layout.nats_store) == 0o700
        for directory in (layout.pids, layout.logs, layout.ssh_dir):
            assert mode(directory) == 0o700, directory
        for name in INFRA:
            assert mode(layout.pid_file(name)) & 0o077 == 0, name
    finally:
        stack.stop()


def test_local_nats_requires_the_stack_login(infra: Stack) -> None:
    """Another local user (or process) without .run/ cannot use the stack's NATS."""
    import nats
    import nats.errors

    async def check() -> None:
        bare = f"nats://127.0.0.1:{infra.ports.nats}"
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(bare, allow_reconnect=False, connect_timeout=5)
        connection = await nats.connect(infra.nats_url, allow_reconnect=False)
        try:
            await connection.jetstream().account_info()
        finally:
            await connection.close()

    asyncio.run(check())
    password = infra.nats_url.split("@")[0].rsplit(":", 1)[1]
    for path in (infra.layout.nats_password, infra.layout.nats_config):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # Not on nats-server's command line, which every local user can read in `ps`.
    assert password not in " ".join(_cmdline(infra.processes["nats"].pid))


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
