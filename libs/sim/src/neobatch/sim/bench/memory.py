"""Resident memory of a process, as benchmarks print it (Linux `/proc/<pid>/status`)."""

from __future__ import annotations

from pathlib import Path


def status_mb(field: str, pid: int | str = "self") -> float:
    """A `kB` field of the process's status (`VmHWM:`, `VmRSS:`) in MB; 0.0 when it cannot be
    read (the process is gone, or not Linux)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM: the process's peak resident set so far."""
    return status_mb("VmHWM:", pid)


def rss_mb(pid: int | str = "self") -> float:
    """VmRSS: the process's resident set now."""
    return status_mb("VmRSS:", pid)
