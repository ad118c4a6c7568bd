"""Processes on this machine known by pid: is one running, which ones match, signal, stop, CPU.

The one copy of these helpers for the local stack, the simulated machines' tools, the benches
and the tests. Liveness comes from ``/proc`` where there is one: a zombie (exited, not yet
reaped) counts as gone, because it runs nothing and an orphan's zombie waits for whoever reaps
orphans in this container. Without ``/proc`` (macOS) ``kill(pid, 0)`` is all there is to go on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

_PROC = Path("/proc")


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``/proc/<pid>/stat`` (R, S, Z ...), or None if it cannot be read."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name in field 2 may contain spaces and parentheses; the state follows the last ')'.
    fields = stat.rpartition(")")[2].split()
    return fields[0] if fields else None


def cmdline(pid: int) -> list[str] | None:
    """The process's argv, or None if it cannot be read (gone, another user's, or no /proc)."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (not a zombie)."""
    if pid <= 0:
        return False
    state = proc_state(pid)
    if state is not None:
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pids_where(matches: Callable[[Path], bool]) -> list[int]:
    found: list[int] = []
    if not _PROC.is_dir():
        return found
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            matched = matches(entry)
        except OSError:
            # Other users' processes and ones that just exited are unreadable; none are ours.
            continue
        if matched and is_running(pid):
            found.append(pid)
    return found


def live_pids(*needles: bytes) -> list[int]:
    """Running processes whose NUL-separated command line contains every one of ``needles``."""

    def matches(entry: Path) -> bool:
        line = (entry / "cmdline").read_bytes()
        return all(needle in line for needle in needles)

    return _running_pids_where(matches)


def pids_with_environ(entry: str) -> list[int]:
    """Running processes of this user whose environment holds ``entry`` (``NAME=value``)."""
    wanted = entry.encode()
    found = _running_pids_where(lambda proc: wanted in (proc / "environ").read_bytes().split(b"\0"))
    # This process may carry the entry itself (a test, or `down` run from inside the stack).
    return [pid for pid in found if pid != os.getpid()]


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by ``pid``; one already gone is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def signal_group_or_pid(pid: int, sig: int) -> None:
    """The whole group when ``pid`` leads one, else ``pid`` alone (never a stranger's group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def wait_gone(pid: int, timeout_seconds: float) -> bool:
    """Poll until ``pid`` no longer runs; whether it stopped within the time."""
    deadline = time.monotonic() + timeout_seconds
    while is_running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(
    pid: int, timeout_seconds: float = 10.0, kill_timeout_seconds: float | None = None
) -> None:
    """SIGTERM the process group led by pid, SIGKILL it if it has not exited in time.

    ``kill_timeout_seconds`` is how long to wait after SIGKILL (default: ``timeout_seconds``).
    """
    if not is_running(pid):
        return
    leads_group = False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        leads_group = os.getpgid(pid) == pid
    signal_group_or_pid(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout_seconds):
        signal_group_or_pid(pid, signal.SIGKILL)
        kill_wait = timeout_seconds if kill_timeout_seconds is None else kill_timeout_seconds
        wait_gone(pid, kill_wait)
    if leads_group:
        # The leader is gone but children it forked may linger in its group; finish them too.
        signal_group(pid, signal.SIGKILL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children (e.g. an sshd session)."""
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")
