"""Peak resident memory of a process, as benchmarks print it (Linux `/proc/<pid>/status`)."""

from __future__ import annotations

from pathlib import Path


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM, the process's peak resident set so far, in MB; 0.0 when it cannot be read (the
    process is gone, or not Linux)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0
