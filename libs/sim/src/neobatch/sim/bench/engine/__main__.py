"""``task bench:engine``: see ``neobatch.sim.bench.engine``.

python -m neobatch.sim.bench.engine [--requests N] [--max-tokens T] [--sweep 8,32,...]
    [--only dispatch,prefix,run_batch] [--prefix-requests N] [--prompts K]
    [--agent-client JSON]... [--agent-env NAME=VALUE]... [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from neobatch.sim import real_engine
from neobatch.sim.bench.engine import measure
from neobatch.sim.bench.engine.agent import child_main

PARTS = ("dispatch", "prefix", "run_batch")


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m neobatch.sim.bench.engine")
    p.add_argument("--requests", type=int, default=5000, help="chat requests for (a) and (b)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--sweep", default="8,32,64,128,256,512", help="direct in-flight levels")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma list of {PARTS}")
    p.add_argument("--prefix-requests", type=int, default=0, help="(c); default = --requests")
    p.add_argument("--prompts", type=int, default=20, help="(c): distinct ~300-token prompts")
    p.add_argument(
        "--agent-client",
        action="append",
        default=[],
        help="extra neobatch runs in (a) with this job `client` block (JSON), e.g. "
        '\'{"max_concurrency":256,"adaptive_concurrency":false}\'',
    )
    p.add_argument(
        "--agent-env",
        action="append",
        default=[],
        help="NAME=VALUE agent setting for every neobatch run (e.g. a dispatch-order switch); "
        "(c) runs neobatch once per distinct --agent-env-variant too",
    )
    p.add_argument(
        "--agent-env-variant",
        action="append",
        default=[],
        help="(c): an extra neobatch run with these NAME=VALUE[,NAME=VALUE] settings, to "
        "compare e.g. prefix-aware order against input order",
    )
    p.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        help="extra vLLM flag for the engine of (a) and (c), e.g. --engine-arg=--num-gpu-blocks-"
        "override --engine-arg=40 (a KV cache smaller than the prompts, where order matters)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _env_pairs(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        for pair in item.split(","):
            name, eq, value = pair.partition("=")
            if not eq or not name.strip():
                raise SystemExit(f"expected NAME=VALUE, got {pair!r}")
            env[name.strip()] = value
    return env


def main(argv: list[str]) -> int:
    args = _parse(argv)
    if args.child:
        child_main(args.child)
        return 0
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if parts - set(PARTS):
        raise SystemExit(f"--only: unknown {sorted(parts - set(PARTS))}; choose from {PARTS}")
    engine = real_engine.find()
    if engine is None:
        print(f"bench:engine: {real_engine.missing_reason()}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    print(f"engine: {engine.python}\nmodel: {engine.model}\nwork dir: {workdir}")
    base_env = _env_pairs(args.agent_env)
    clients: list[dict[str, Any]] = [{}] + [json.loads(c) for c in args.agent_client]
    try:
        if parts & {"dispatch", "prefix"}:
            with measure.Served(engine, workdir, tuple(args.engine_arg)) as served:
                if "dispatch" in parts:
                    sweep = [int(x) for x in args.sweep.split(",") if x.strip()]
                    rows = served.dispatch(args.requests, args.max_tokens, sweep, clients, base_env)
                    measure.print_dispatch(rows, args.requests, args.max_tokens)
                if "prefix" in parts:
                    variants = [base_env] + [
                        {**base_env, **_env_pairs([v])} for v in args.agent_env_variant
                    ]
                    rows = served.prefix(
                        args.prefix_requests or args.requests,
                        args.max_tokens,
                        args.prompts,
                        variants,
                    )
                    measure.print_prefix(rows, args.prompts)
        if "run_batch" in parts:
            figures = measure.run_batch_vs_job(engine, workdir, args.requests, args.max_tokens)
            measure.print_run_batch(figures, args.requests)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main(sys.argv[1:]))
