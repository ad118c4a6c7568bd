"""Print the bench's figures (the format is what people compare between runs: keep it stable)."""

from __future__ import annotations

import os
from typing import Any

from neobatch.sim.bench.dispatch.measure import CONCURRENCY
from neobatch.sim.bench.dispatch.nginx import ENGINE_SLEEP_SECONDS


def print_throughput(t: dict[str, Any], ssh: str) -> None:
    rounds = t["rounds"]
    print(
        f"\nThroughput: {t['requests']} requests, concurrency {CONCURRENCY}, nginx echo "
        f"{ENGINE_SLEEP_SECONDS * 1000:.0f} ms, SSH host: {ssh}, {len(rounds)} round(s)"
    )
    heads = "".join(f"{'round ' + str(i + 1):>9}" for i in range(len(rounds)))
    print(f"{'req/s':<56}{heads}{'mid':>9}{'CPU ms/req':>12}")
    paths = [
        ("direct", "direct: asyncio + aiohttp -> nginx"),
        ("lean", "for scale: the agent's HTTP client alone -> nginx"),
        ("tunnel", "for scale: the same client through the agent's SSH tunnel"),
        ("agent", "agent: GridFS, SSH tunnel, EngineClient, checkpoints"),
    ]
    for key, label in paths:
        values = "".join(f"{r[key + '_rps']:>9.0f}" for r in rounds)
        print(f"{label:<56}{values}{t[key + '_rps']:>9.0f}{t[key + '_cpu_ms']:>12.2f}")
    ratios = "".join(f"{r['ratio']:>9.1%}" for r in rounds)
    print(f"{'ratio agent/direct':<56}{ratios}{t['ratio']:>9.1%}")
    print(
        "CPU ms/req: the client side in the mid round (agent: its process while in_progress, "
        "not its ssh child)"
    )
    verdict = "meets" if t["ratio"] >= 0.8 else "below"
    print(
        f"mid = the round with the median ratio; ratio {t['ratio']:.1%}: {verdict} the 80% target"
    )
    a = t["agent"]
    print(
        f"agent (mid round): dispatch {a['dispatch_seconds']:.2f}s, whole batch "
        f"{a['total_seconds']:.2f}s (validation, SSH, engine launch, output file), "
        f"{a['stored_results']} checkpoints, peak RSS {a['peak_rss_mb']:.0f} MB"
    )
    n = t["requests"]
    cpu = [f"agent {a['cpu_seconds'] / n * 1e3:.2f}"]
    cpu += [f"its ssh tunnel {a.get('children_cpu_seconds', 0.0) / n * 1e3:.2f}"]
    cpu += [f"{k} {v / n * 1e3:.2f}" for k, v in a["helper_cpu_seconds"].items()]
    print(f"CPU ms per request over the whole batch: {', '.join(cpu)} ({os.cpu_count()} cores)")


def print_memory(m: dict[str, Any]) -> None:
    print("\nMemory: peak RSS (VmHWM) of the agent process, one batch each")
    print(f"{'requests':>9} {'input MB':>9} {'peak RSS MB':>12} {'at start MB':>12} {'batch s':>8}")
    for r in m["rows"]:
        print(
            f"{r['requests']:>9} {r['input_mb']:>9.1f} {r['peak_rss_mb']:>12.1f} "
            f"{r['startup_rss_mb']:>12.1f} {r['total_seconds']:>8.1f}"
        )
        phases = ", ".join(f"{k} {v:.0f}" for k, v in r["rss_by_status"].items())
        print(f"{'':>9} largest RSS sampled per status (MB): {phases}")
    peak = max(r["peak_rss_mb"] for r in m["rows"])
    ok = peak < 250 and abs(m["delta_mb"]) <= 50
    print(
        f"difference: {m['delta_mb']:+.1f} MB; targets < 250 MB and within 50 MB: "
        f"{'met' if ok else 'NOT met'}"
    )


def print_oversize(m: dict[str, Any]) -> None:
    from neobatch.sim.bench.dispatch.measure import OVERSIZE_BYTES

    print(
        f"\nMemory, oversize answers: peak RSS (VmHWM) of the agent, {m['requests']} requests, "
        f"engine answering {OVERSIZE_BYTES // 2**20} MB bodies to some (engine simulator)"
    )
    print(f"{'engine':<32} {'too large':>9} {'peak RSS MB':>12} {'at start MB':>12} {'batch s':>8}")
    for r in m["rows"]:
        print(
            f"{r['label']:<32} {r['oversize']:>9} {r['peak_rss_mb']:>12.1f} "
            f"{r['startup_rss_mb']:>12.1f} {r['total_seconds']:>8.1f}"
        )
    flat = m["delta_mb"] <= 50
    print(
        f"largest difference from normal answers: {m['delta_mb']:+.1f} MB; each oversize line "
        f"ended as response_too_large, the rest completed; within 50 MB: "
        f"{'met' if flat else 'NOT met'}"
    )
