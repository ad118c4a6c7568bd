"""`task bench:scale` in miniature, through the same code path, so the bench cannot rot.

Not a timed test: the figures are printed, never asserted. What is asserted is what the bench
itself checks: each run completed, its output file read back holds each custom_id once in
input order, and the peak memory of every process is printed.
"""

from __future__ import annotations

import subprocess
import sys


def test_bench_scale_smoke() -> None:
    # The 1-machine run last, as the long benches run it: the comparison is printed once known.
    args = ["--requests", "120", "--machines", "2,1", "--latency-ms", "5", "--concurrency", "8"]
    args += ["--timeout", "120"]
    done = subprocess.run(
        [sys.executable, "-m", "neobatch.sim.bench.scale", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = [line for line in lines if " machines  " in line]
    assert all("completed" in row and "output ok" in row for row in rows), rows
    summary = lines.index("against the 1-machine run (it ran after these):")
    compared = [line for line in lines[summary:] if " machines  " in line]
    assert [row.split()[0] for row in compared] == ["2", "1"], done.stdout
    assert all("speed-up" in row and "engine bound" in row for row in compared), compared
    memory = next(line for line in done.stdout.splitlines() if line.startswith("peak RSS"))
    assert "agent (this process)" in memory and "secantus" in memory, memory
