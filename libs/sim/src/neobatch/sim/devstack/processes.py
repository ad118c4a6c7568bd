"""The stack's processes by pid: components an earlier ``up`` started, and leftovers to sweep.

Every process the stack starts carries ``NEOBATCH_STACK_DIR=<run dir>`` in its environment (the
SSH host passes its environment on to the commands it runs), so stopping the stack can end what
a crashed runtime-agent left behind (detached engines). That sweep reads ``/proc``, so it only
works on Linux.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from neobatch.sim import procs
from neobatch.sim.devstack.clouds import SIM_MODULES
from neobatch.sim.devstack.components import (
    MONGO,
    NATS,
    SERVICE_MODULES,
    SSH_HOST,
    SSH_HOST_MODULE,
    STACK_MARKER_ENV,
)
from neobatch.sim.devstack.layout import RunLayout

DEFAULT_STOP_TIMEOUT = 10.0


class ProcessHandle(Protocol):
    @property
    def pid(self) -> int: ...

    def alive(self) -> bool: ...

    def stop(self, timeout_seconds: float = ...) -> int | None: ...


class AdoptedProcess:
    """A component started by an earlier ``up``, known only from its pid file."""

    def __init__(self, name: str, pid: int, log_path: Path) -> None:
        self.name = name
        self._pid = pid
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self._pid

    def alive(self) -> bool:
        return procs.is_running(self._pid)

    def stop(self, timeout_seconds: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        procs.stop_pid(self._pid, timeout_seconds)
        return None

    def __repr__(self) -> str:
        return f"AdoptedProcess(name={self.name!r}, pid={self._pid})"


def runs_component(name: str, pid: int) -> bool:
    """Whether pid still runs the component's program, so a recycled pid is never signalled."""
    argv = procs.cmdline(pid)
    if argv is None:
        # No /proc (e.g. macOS): nothing better to go on than the pid itself.
        return True
    if name == NATS:
        return bool(argv) and Path(argv[0]).name == "nats-server"
    if name == MONGO:
        return "secantus" in argv
    module = SSH_HOST_MODULE if name == SSH_HOST else SERVICE_MODULES.get(name)
    module = module or SIM_MODULES.get(name)
    return module is not None and module in argv


def read_pid(layout: RunLayout, name: str) -> int | None:
    try:
        return int(layout.pid_file(name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_pid(layout: RunLayout, name: str) -> int | None:
    """The pid from the component's pid file if that process is alive and still the component."""
    pid = read_pid(layout, name)
    if pid is None or not procs.is_running(pid) or not runs_component(name, pid):
        return None
    return pid


def marked_pids(run_dir: Path) -> list[int]:
    """Pids of this user's processes whose environment carries this stack's marker."""
    return procs.pids_with_environ(f"{STACK_MARKER_ENV}={run_dir}")


def sweep_marked(run_dir: Path, timeout_seconds: float = 3.0) -> list[int]:
    """Terminate leftovers of this stack (e.g. engines detached from a dead agent)."""
    pids = marked_pids(run_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_seconds
    for pid in pids:
        if not procs.wait_gone(pid, max(0.0, deadline - time.monotonic())):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return pids


def stop_tiers(names: Sequence[str]) -> list[list[str]]:
    """``names`` (in start order) in the tiers they stop in, each tier in reverse start order:
    the services, then the servers (nats-server, the database, the SSH host, simulators),
    which none of the others use once the services are gone."""
    tiers = [
        [name for name in names if name in SERVICE_MODULES],
        [name for name in names if name not in SERVICE_MODULES],
    ]
    return [list(reversed(tier)) for tier in tiers if tier]
