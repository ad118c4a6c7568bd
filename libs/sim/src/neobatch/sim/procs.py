"""What runs on this machine, read from /proc: tests and benches check processes by it.

A zombie (exited, not yet reaped) counts as gone: it runs nothing, and an orphan's zombie
waits for whoever reaps orphans in this container.
"""

from __future__ import annotations

from pathlib import Path


def _state(proc: Path) -> str | None:
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_running(pid: int) -> bool:
    state = _state(Path(f"/proc/{pid}"))
    return state is not None and state != "Z"


def live_pids(*needles: bytes) -> list[int]:
    """Running processes whose NUL-separated command line contains every one of `needles`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if all(n in cmdline for n in needles) and _state(proc) not in (None, "Z"):
            pids.append(int(proc.name))
    return pids
