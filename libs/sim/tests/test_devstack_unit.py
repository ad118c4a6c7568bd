"""devstack pieces that need no servers: configuration, port checks, status output, stopping."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neobatch.sim.devstack import cli, components
from neobatch.sim.devstack.layout import (
    Ports,
    RunLayout,
    StackError,
    find_run_dir,
    read_env_file,
    write_env_file,
)
from neobatch.sim.devstack.processes import marked_pids
from neobatch.sim.devstack.stack import start_stack
from neobatch.sim.devstack.status import StatusRow, collect_status, format_status
from neobatch.sim.procs import is_running, stop_pid
from neobatch.sim.testing.servers import free_port, port_in_use


def test_ports_default_and_env_overrides() -> None:
    assert Ports.from_env({}) == Ports(nats=4222, mongo=27017, ssh=2222, console=8080)
    ports = Ports.from_env({"NEOBATCH_NATS_PORT": "14222", "NEOBATCH_CONSOLE_PORT": " 9090 "})
    assert (ports.nats, ports.mongo, ports.console) == (14222, 27017, 9090)


@pytest.mark.parametrize("value", ["abc", "0", "70000"])
def test_ports_reject_bad_values(value: str) -> None:
    with pytest.raises(StackError, match="NEOBATCH_SSH_PORT"):
        Ports.from_env({"NEOBATCH_SSH_PORT": value})


def test_free_ports_are_distinct() -> None:
    ports = Ports.free()
    assert len({ports.nats, ports.mongo, ports.ssh, ports.console}) == 4


def test_find_run_dir_walks_up_to_the_taskfile(tmp_path: Path) -> None:
    (tmp_path / "Taskfile.yml").write_text("version: '3'\n")
    nested = tmp_path / "libs" / "sim"
    nested.mkdir(parents=True)
    assert find_run_dir(nested, environ={}) == tmp_path.resolve() / ".run"


def test_find_run_dir_env_override_and_missing(tmp_path: Path) -> None:
    assert (
        find_run_dir(tmp_path, environ={"NEOBATCH_RUN_DIR": str(tmp_path / "x")})
        == (tmp_path / "x").resolve()
    )
    with pytest.raises(StackError, match="NEOBATCH_RUN_DIR"):
        find_run_dir(tmp_path, environ={})


def test_env_file_round_trip(tmp_path: Path) -> None:
    values = {"A": "plain", "B": "with space/and 'quote'", "C": ""}
    write_env_file(tmp_path / "stack.env", values)
    assert read_env_file(tmp_path / "stack.env") == values
    # The file is meant to be sourced by a shell too.
    out = subprocess.run(
        ["sh", "-c", '. "$0"; printf %s "$B"', str(tmp_path / "stack.env")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == values["B"]


def test_port_in_use_sees_a_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(free_port())


def test_busy_port_fails_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        ports = Ports(nats=busy, mongo=free_port(), ssh=free_port(), console=free_port())
        with pytest.raises(StackError) as error:
            start_stack(tmp_path / "run", ports, services=())
    message = str(error.value)
    assert f"port {busy} for nats is in use" in message
    assert "NEOBATCH_NATS_PORT" in message
    assert not list((tmp_path / "run" / "pids").iterdir())


def test_format_status_ends_with_two_machine_readable_lines() -> None:
    rows = [
        StatusRow("nats", 101, True, 4222),
        StatusRow("planner", None, False, None),
    ]
    text = format_status(rows, "http://127.0.0.1:8080")
    lines = text.splitlines()
    assert lines[0].split() == ["COMPONENT", "PID", "ALIVE", "PORT"]
    assert lines[1].split() == ["nats", "101", "yes", "4222"]
    assert lines[2].split() == ["planner", "-", "no", "-"]
    assert lines[-3:] == [
        "NEOBATCH_OPERATOR_KEY=nb-dev-local-operator-key",
        "NEOBATCH_CONSOLE_URL=http://127.0.0.1:8080",
        "NEOBATCH_API_KEY=nb-dev-local-key",
    ]


def test_status_of_an_empty_run_dir(tmp_path: Path) -> None:
    rows, url = collect_status(tmp_path, Ports(console=18080))
    assert [row.component for row in rows] == list(components.ALL_COMPONENTS)
    assert not any(row.alive for row in rows)
    assert url == "http://127.0.0.1:18080"


def test_status_does_not_trust_a_recycled_pid(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    layout.pids.mkdir()
    # A live pid that is not nats-server (this test process) must not read as a running nats.
    layout.pid_file("nats").write_text(f"{os.getpid()}\n")
    rows, _ = collect_status(tmp_path, Ports())
    nats = next(row for row in rows if row.component == "nats")
    assert nats.pid == os.getpid()
    assert not nats.alive


def test_status_prefers_ports_recorded_by_up(tmp_path: Path) -> None:
    write_env_file(
        tmp_path / "stack.env",
        {"NEOBATCH_CONSOLE_URL": "http://127.0.0.1:18081", "NEOBATCH_NATS_PORT": "14223"},
    )
    rows, url = collect_status(tmp_path, Ports())
    assert url == "http://127.0.0.1:18081"
    assert next(row for row in rows if row.component == "nats").port == 14223


def test_cli_status_output(tmp_path: Path) -> None:
    env = {**os.environ, "NEOBATCH_RUN_DIR": str(tmp_path), "NEOBATCH_CONSOLE_PORT": "18082"}
    out = subprocess.run(
        [sys.executable, "-m", "neobatch.sim.devstack", "status"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert out.splitlines()[-3:] == [
        "NEOBATCH_OPERATOR_KEY=nb-dev-local-operator-key",
        "NEOBATCH_CONSOLE_URL=http://127.0.0.1:18082",
        "NEOBATCH_API_KEY=nb-dev-local-key",
    ]


def test_up_refuses_unknown_provisioners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEOBATCH_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("PROVISIONER", "runpod,kubernetes")
    assert cli.main(["up"]) != 0
    assert "PROVISIONER='runpod,kubernetes' is not supported" in capsys.readouterr().err
    assert not (tmp_path / "pids").exists()


def test_stop_pid_kills_the_whole_group() -> None:
    # A shell leading its own session with a child, like a service that forked a worker.
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    try:
        stop_pid(leader.pid, timeout_seconds=5)
        leader.wait(timeout=5)
        deadline = time.monotonic() + 5
        while is_running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_running(child)
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()


# Given URLs, nats and mongo are not started, so these failures come quickly.
EXTERNAL = {"nats_url": "nats://127.0.0.1:1", "mongo_url": "mongodb://127.0.0.1:1"}


def test_component_that_dies_fails_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(components, "SSH_HOST_MODULE", "neobatch.sim.no_such_ssh_host")
    with pytest.raises(StackError) as error:
        start_stack(tmp_path / "run", Ports.free(), services=(), **EXTERNAL)
    message = str(error.value)
    assert "exited with code" in message
    assert "No module named neobatch.sim.no_such_ssh_host" in message
    assert not list((tmp_path / "run" / "pids").iterdir())


def test_console_that_dies_is_reported_and_the_rest_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(components.SERVICE_MODULES, "console", "neobatch.no_such_console")
    with pytest.raises(StackError) as error:
        start_stack(tmp_path / "run", Ports.free(), services=("console",), **EXTERNAL)
    message = str(error.value)
    assert "console exited before" in message and "/healthz" in message
    assert "No module named neobatch.no_such_console" in message
    # The SSH host started before the console must not be left running.
    assert not list((tmp_path / "run" / "pids").iterdir())
    assert not marked_pids((tmp_path / "run").resolve())
