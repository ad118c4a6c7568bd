"""The two measurements: throughput (direct, the agent's client, its tunnel, the agent) and memory."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from neobatch.sim.bench.dispatch.agent import run_child
from neobatch.sim.bench.dispatch.load import (
    direct_rate,
    engine_client_rate,
    request_line,
    tunnel_rate,
    upload_to,
)
from neobatch.sim.bench.dispatch.nginx import CHAT, DirectEngine, Nginx
from neobatch.sim.bench.dispatch.rig import BenchRig
from neobatch.sim.procs import cpu_seconds

CONCURRENCY = 256
# The oversize engine's answers: what drove the agent to 1.81 GB before the response cap.
OVERSIZE_BYTES = 50 * 1024 * 1024


def measure_throughput(
    rig: BenchRig,
    nginx: Nginx,
    requests: int,
    concurrency: int,
    *,
    rounds: int = 1,
    profile: Path | None = None,
) -> dict[str, Any]:
    """`rounds` times: direct, through the tunnel alone, the agent; the median is the figure.

    Rounds interleave the three so a neighbour's load on a shared machine hits them alike.
    """
    file_id, _ = asyncio.run(upload_to(rig.mongo_url, "bench_throughput", requests, 0))
    results: list[dict[str, Any]] = []
    for n in range(rounds):
        engine = DirectEngine(nginx, rig.workdir / f"nginx-direct-{n}")
        try:
            url = f"http://127.0.0.1:{engine.port}"
            direct = asyncio.run(direct_rate(url, requests, concurrency))
            lean = asyncio.run(engine_client_rate(url, requests, concurrency))
            tunnel = asyncio.run(tunnel_rate(rig, engine.port, requests, concurrency))
        finally:
            engine.stop()
        job = rig.job("bench_throughput", file_id, concurrency, timeout=max(300, requests / 20))
        helpers = rig.helper_pids()
        before = {name: cpu_seconds(pid) for name, pid in helpers.items()}
        log = rig.workdir / f"logs/agent-throughput-{n}.log"
        agent = run_child(job, log, profile if n == 0 else None)
        agent["helper_cpu_seconds"] = {
            name: cpu_seconds(pid) - before[name] for name, pid in helpers.items()
        }
        _check(agent, requests)
        agent_rate = requests / agent["dispatch_seconds"]
        results.append(
            {
                "direct_rps": direct.rps,
                "direct_cpu_ms": direct.cpu_ms,
                "lean_rps": lean.rps,
                "lean_cpu_ms": lean.cpu_ms,
                "tunnel_rps": tunnel.rps,
                "tunnel_cpu_ms": tunnel.cpu_ms,
                "agent_rps": agent_rate,
                "agent_cpu_ms": agent["dispatch_cpu_seconds"] / requests * 1e3,
                "ratio": agent_rate / direct.rps,
                "agent": agent,
            }
        )
    median = sorted(results, key=lambda r: r["ratio"])[len(results) // 2]
    return {"requests": requests, "rounds": results, **median}


def measure_memory(rig: BenchRig, large: int, small: int, line_bytes: int) -> dict[str, Any]:
    pad = max(0, line_bytes - len(request_line(0)))
    rows = []
    for n in (small, large):
        db = f"bench_memory_{n}"
        file_id, size = asyncio.run(upload_to(rig.mongo_url, db, n, pad))
        job = rig.job(db, file_id, CONCURRENCY, timeout=max(600, n / 20))
        figures = run_child(job, rig.workdir / f"logs/agent-memory-{n}.log")
        _check(figures, n)
        rows.append({"requests": n, "input_mb": size / 1e6, **figures})
    return {"rows": rows, "delta_mb": rows[1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]}


def measure_oversize(rig: BenchRig, requests: int, rate: float) -> dict[str, Any]:
    """Peak RSS of the agent whose engine (the simulator) answers a share of requests with
    50 MB bodies, by Content-Length and chunked, beside the same batch answered normally.

    Each oversize line must end as its `response_too_large` error, every other line complete.
    """
    from neobatch.sim.engine import is_oversize

    db = "bench_oversize"
    file_id, size = asyncio.run(upload_to(rig.mongo_url, db, requests, 0))
    bodies = (json.loads(request_line(i))["body"] for i in range(requests))
    oversize = sum(is_oversize(CHAT, body, rate) for body in bodies)
    rows = []
    for label, flags in (
        ("normal answers", []),
        ("50 MB answers, Content-Length", ["--oversize-transfer", "length"]),
        ("50 MB answers, chunked", ["--oversize-transfer", "chunked"]),
    ):
        command = [sys.executable, "-m", "neobatch.sim.engine", "--port", "{port}"]
        command += ["--model", "{model}"]
        if flags:
            command += ["--oversize-rate", str(rate), "--oversize-bytes", str(OVERSIZE_BYTES)]
        job = replace(
            rig.job(db, file_id, CONCURRENCY, timeout=600), engine_command=command + flags
        )
        slug = label.split(",")[-1].strip().split()[0].lower()
        figures = run_child(job, rig.workdir / f"logs/agent-oversize-{slug}.log")
        expected_failed = oversize if flags else 0
        if (
            figures["status"] != "completed"
            or figures["failed"] != expected_failed
            or figures["completed"] != requests - expected_failed
        ):
            raise RuntimeError(
                f"{label}: batch ended {figures['status']} with {figures['completed']} completed "
                f"and {figures['failed']} failed; expected {expected_failed} failed "
                f"({figures['error']})"
            )
        rows.append({"label": label, "oversize": expected_failed, **figures})
    normal = rows[0]["peak_rss_mb"]
    return {
        "requests": requests,
        "input_mb": size / 1e6,
        "rows": rows,
        "delta_mb": max(r["peak_rss_mb"] for r in rows) - normal,
    }


def _check(figures: dict[str, Any], requests: int) -> None:
    if figures["status"] != "completed" or figures["completed"] != requests:
        raise RuntimeError(
            f"agent batch ended {figures['status']} with {figures['completed']}/{requests} "
            f"completed ({figures['error']})"
        )
