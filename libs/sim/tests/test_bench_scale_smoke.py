"""`task bench:scale` in miniature, through the same code path, so the bench cannot rot.

Not a timed test: the figures are printed, never asserted. What is asserted is what the bench
itself checks: each run completed, its output file read back holds each custom_id once in
input order, and the peak memory of every process is printed.
"""

from __future__ import annotations

import subprocess
import sys


def test_bench_scale_smoke() -> None:
    args = ["--requests", "120", "--machines", "1,2", "--latency-ms", "5", "--concurrency", "8"]
    args += ["--timeout", "120"]
    done = subprocess.run(
        [sys.executable, "-m", "neobatch.sim.bench.scale", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if " machines  " in line]
    assert len(rows) == 2, done.stdout
    assert all("completed" in row and "output ok" in row for row in rows), rows
    memory = next(line for line in done.stdout.splitlines() if line.startswith("peak RSS"))
    assert "agent (this process)" in memory and "secantus" in memory, memory
