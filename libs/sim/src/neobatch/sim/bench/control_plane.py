"""`task bench:control-plane`: how long each control-plane hop takes, over many jobs.

Starts nats-server, the database, the console, planner and resource-manager as processes;
provisioning is instant (an ssh pool of many entries on one listening loopback port) and this
script stands in for the runtime-agent, ending every batch the moment it is requested. It
watches the event stream and reports, per job, the time between:

  job.queued → provision.requested        (planning)
  provision.requested → provision.running (the resource-manager, instant provisioning)
  provision.running → batch.requested     (submission)
  batch.terminal → provision.release_requested  (release)

plus jobs planned per second. Times are when each event reached this observer, so they
include the outbox relay and JetStream, as an integration would see them.

It also prints the control plane's own idle GPU time per job (issue 16), from the same
records the bill reads: machine ready (the provision's `running_at`) → first request sent
(the batch's `dispatch_started_at`), and last request answered (`dispatch_ended_at`) → release
call (the provision's `releasing_at`, when the resource-manager began releasing). The stand-in
agent sends its "first request" the moment the batch reaches it and answers it at once, so
these are the planner's and resource-manager's share of the idle time the bill shows (a real
agent adds its SSH, engine start-up and output files to them).

By default every job may provision at once (MAX_CONCURRENT_PROVISIONING = --jobs), so the
first hop is the planner's own latency. With a lower `--max-provisioning`, jobs wait for a
free slot by policy, and the first hop also counts that wait: how long the resource-manager
takes to bring the machines ahead of them up.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import msgspec
import nats
from nats.js.api import DeliverPolicy
from pymongo import MongoClient

from neobatch.common.clock import utcnow
from neobatch.common.contracts import (
    BatchRequested,
    BatchStatus,
    BatchTerminal,
    RequestCounts,
    encode_event,
)
from neobatch.common.subjects import Namespace
from neobatch.sim.devstack import Ports, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient, batch_lines, sim_engine_template

HOPS = {
    "job created → provision requested": ("job.queued", "provision.requested"),
    "provision requested → provision running": ("provision.requested", "provision.running"),
    "provision running → batch requested": ("provision.running", "batch.requested"),
    "batch terminal → release requested": ("batch.terminal", "provision.release_requested"),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def observe_and_finish(
    nats_url: str, jobs: int, timeout_seconds: float
) -> dict[str, dict[str, float]]:
    """Record when each event arrives; answer every batch.requested with a completed batch."""
    ns = Namespace()
    seen: dict[str, dict[str, float]] = defaultdict(dict)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    done = asyncio.Event()

    async def on_event(msg: nats.aio.msg.Msg) -> None:
        now = time.perf_counter()
        subject = msg.subject.removeprefix(f"{ns.prefix}.")
        job_id = msgspec.json.decode(msg.data, type=_HasJob).job_id
        seen[job_id].setdefault(subject, now)
        if subject == "batch.requested":
            request = msgspec.json.decode(msg.data, type=BatchRequested)
            sent = utcnow()  # the first request sent, and answered, at once
            terminal = BatchTerminal(
                batch_id=request.batch_id,
                job_id=request.job_id,
                status=BatchStatus.COMPLETED,
                request_counts=RequestCounts(total=1, completed=1),
                dispatch_started_at=sent,
                dispatch_ended_at=sent,
            )
            await js.publish(
                ns.subject(terminal),
                encode_event(terminal),
                headers={"Nats-Msg-Id": terminal.event_id},
            )
        if sum("provision.release_requested" in s for s in seen.values()) >= jobs:
            done.set()
        await msg.ack()

    await js.subscribe(
        f"{ns.prefix}.>", cb=on_event, deliver_policy=DeliverPolicy.NEW, manual_ack=True
    )
    try:
        await asyncio.wait_for(done.wait(), timeout_seconds)
    except TimeoutError:
        counts: dict[str, int] = defaultdict(int)
        for times in seen.values():
            for subject in times:
                counts[subject] += 1
        raise TimeoutError(
            f"not every job was released within {timeout_seconds}s; events seen: {dict(counts)}"
        ) from None
    finally:
        await nc.close()
    return seen


class _HasJob(msgspec.Struct):
    job_id: str


def report(seen: dict[str, dict[str, float]]) -> None:
    for label, (start, end) in HOPS.items():
        gaps = [
            (times[end] - times[start]) * 1000
            for times in seen.values()
            if start in times and end in times
        ]
        if not gaps:
            print(f"{label:40s} no samples")
            continue
        print(
            f"{label:40s} n={len(gaps):4d}  p50={statistics.median(gaps):7.1f} ms  "
            f"p99={percentile(gaps, 0.99):7.1f} ms  max={max(gaps):7.1f} ms"
        )
    planned = sorted(
        times["provision.requested"] for times in seen.values() if "provision.requested" in times
    )
    if len(planned) > 1:
        print(f"{'jobs planned per second':40s} {len(planned) / (planned[-1] - planned[0]):.1f}")


IDLE = {
    "machine ready → first request sent": ("running_at", "dispatch_started_at"),
    "last request answered → release call": ("dispatch_ended_at", "releasing_at"),
}


def idle_times(mongo_url: str, db_name: str, jobs: int, timeout_seconds: float) -> dict:
    """Per job, the control plane's idle GPU seconds (IDLE), once every machine is releasing."""
    deadline = time.monotonic() + timeout_seconds
    with MongoClient(mongo_url) as client:
        db = client[db_name]
        while True:
            provisions = list(db.provisions.find({"releasing_at": {"$ne": None}}))
            if len(provisions) >= jobs or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        found = db.jobs.find({"_id": {"$in": [p["job_id"] for p in provisions]}})
        runs = {job["_id"]: job for job in found}
    gaps: dict[str, list[float]] = {label: [] for label in IDLE}
    for provision in provisions:
        times = {**runs.get(provision["job_id"], {}), **provision}
        for label, (start, end) in IDLE.items():
            if times.get(start) is not None and times.get(end) is not None:
                gaps[label].append((times[end] - times[start]).total_seconds() * 1000)
    return gaps


def report_idle(gaps: dict[str, list[float]]) -> None:
    print("control plane's own idle GPU time per job (target: p99 < 1000 ms each)")
    for label, values in gaps.items():
        if not values:
            print(f"{label:40s} no samples")
            continue
        print(
            f"{label:40s} n={len(values):4d}  p50={statistics.median(values):7.1f} ms  "
            f"p99={percentile(values, 0.99):7.1f} ms  max={max(values):7.1f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neobatch.sim.bench.control_plane", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds between job creations (0 = as fast as possible)",
    )
    parser.add_argument(
        "--create-concurrency",
        type=int,
        default=1,
        help="jobs created at once through the console (a denser burst)",
    )
    parser.add_argument(
        "--max-provisioning",
        type=int,
        default=None,
        help="MAX_CONCURRENT_PROVISIONING for the planner (default: --jobs, so no job waits)",
    )
    parser.add_argument(
        "--dump",
        type=Path,
        help="write every job's event arrival times (seconds) to this JSON file",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nb-bench-") as run_dir:
        ports = Ports.free()
        pool = ",".join(f"u{i}@127.0.0.1:{ports.ssh}" for i in range(args.jobs))
        env = {
            "NEOBATCH_DB": "bench",
            "NEOBATCH_SSH_POOL": pool,
            "MAX_CONCURRENT_PROVISIONING": str(args.max_provisioning or args.jobs),
        }
        stack = start_stack(
            Path(run_dir), ports, env, services=("console", "planner", "resource-manager")
        )
        try:
            console = ConsoleClient.for_stack(stack)
            model_id = console.ensure_model()
            console.create_template(model_id, sim_engine_template("bench", model_id))
            file_id = console.upload(batch_lines(1))

            async def run() -> dict[str, dict[str, float]]:
                observer = asyncio.create_task(
                    observe_and_finish(stack.nats_url, args.jobs, args.timeout)
                )
                await asyncio.sleep(0.5)  # let the observer's subscription bind before jobs start
                started = time.perf_counter()
                remaining = iter(range(args.jobs))

                async def creator() -> None:
                    for _ in remaining:
                        await asyncio.to_thread(console.create_job, file_id, model_id, "bench")
                        await asyncio.sleep(args.interval)

                await asyncio.gather(*(creator() for _ in range(args.create_concurrency)))
                print(f"created {args.jobs} jobs in {time.perf_counter() - started:.1f}s")
                return await observer

            seen = asyncio.run(run())
            console.close()
            idle = idle_times(stack.mongo_url, env["NEOBATCH_DB"], args.jobs, 30)
        finally:
            stack.stop()
    print(f"MAX_CONCURRENT_PROVISIONING={args.max_provisioning or args.jobs}")
    report(seen)
    report_idle(idle)
    if args.dump is not None:
        args.dump.write_bytes(msgspec.json.encode(seen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
