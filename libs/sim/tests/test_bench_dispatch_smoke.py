"""`task bench:dispatch` in miniature, through the same code path, so the bench cannot rot.

Not a timed test: the figures are printed, never asserted. Both parts run (a 200-request
throughput comparison and a small memory pair); nginx with the echo module comes from
Debian's packages, and the test is skipped, saying why, where they cannot be installed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from neobatch.sim.bench.dispatch.nginx import NginxUnavailable, ensure_nginx, nginx_conf


def test_bench_dispatch_smoke(tmp_path) -> None:
    try:
        nginx = ensure_nginx()
    except NginxUnavailable as exc:
        pytest.skip(f"bench:dispatch needs nginx with the echo module: {exc}")
    # The config nginx itself accepts (`-t`), with its own prefix and loopback port.
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(nginx, tmp_path, 1))
    checked = subprocess.run(
        [nginx.binary, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "e.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr

    args = ["--requests", "200", "--rounds", "1"]
    args += ["--memory-requests", "300", "--memory-small", "100"]
    # The oversize rows in miniature: 2 of 20 lines answered with 50 MB (Content-Length, chunked).
    args += ["--oversize-requests", "20"]
    args += ["--line-bytes", "1000"]
    done = subprocess.run(
        [sys.executable, "-m", "neobatch.sim.bench.dispatch", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "ratio agent/direct" in done.stdout and "the 80% target" in done.stdout
    assert "difference:" in done.stdout
