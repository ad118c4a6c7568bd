"""``python -m neobatch.sim.bench.dispatch`` (``./task bench:dispatch``); see the package doc."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from neobatch.sim.bench.dispatch.agent import child_main
from neobatch.sim.bench.dispatch.measure import (
    CONCURRENCY,
    measure_memory,
    measure_oversize,
    measure_throughput,
)
from neobatch.sim.bench.dispatch.nginx import ensure_nginx
from neobatch.sim.bench.dispatch.report import print_memory, print_oversize, print_throughput
from neobatch.sim.bench.dispatch.rig import BenchRig, find_sshd


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m neobatch.sim.bench.dispatch")
    parser.add_argument("--only", choices=("throughput", "memory"), default=None)
    parser.add_argument("--requests", type=int, default=20_000, help="throughput requests")
    parser.add_argument("--memory-requests", type=int, default=50_000)
    parser.add_argument("--memory-small", type=int, default=1_000)
    parser.add_argument("--line-bytes", type=int, default=4_000, help="memory input line size")
    parser.add_argument(
        "--oversize-requests", type=int, default=1_000, help="memory: oversize-answers batch"
    )
    parser.add_argument(
        "--oversize-rate", type=float, default=0.1, help="share of lines answered with 50 MB"
    )
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (median wins)")
    parser.add_argument(
        "--ssh",
        choices=("auto", "sim", "openssh"),
        default="auto",
        help="the SSH host: OpenSSH's sshd (what GPU machines run; auto when installed) or the "
        "asyncssh simulator",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the agent: collapsed stacks to this file"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return 0
    nginx = ensure_nginx()
    workdir = Path(tempfile.mkdtemp(prefix="neobatch-bench-dispatch-"))
    workdir.chmod(0o755)
    ssh = args.ssh
    if ssh == "auto":
        ssh = "openssh" if find_sshd() else "sim"
    rig = BenchRig(workdir, nginx, ssh=ssh)
    try:
        rig.start()
        if args.only in (None, "throughput"):
            t = measure_throughput(
                rig,
                nginx,
                args.requests,
                args.concurrency,
                rounds=args.rounds,
                profile=args.profile,
            )
            print_throughput(t, ssh)
        if args.only in (None, "memory"):
            m = measure_memory(rig, args.memory_requests, args.memory_small, args.line_bytes)
            print_memory(m)
            print_oversize(measure_oversize(rig, args.oversize_requests, args.oversize_rate))
    finally:
        rig.stop()
        if args.keep:
            print(f"\nlogs kept in {workdir}/logs")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
