"""``task bench:scale``: one batch spread over 1, 2, 4, 8 machines (issue 15).

python -m neobatch.sim.bench.scale [--requests N] [--machines 1,2,4,8] [--latency-ms L]
    [--concurrency C] [--timeout S] [--keep]

Each machine is an engine simulator with a fixed per-request latency (its own process and
port) behind the SSH host simulator on loopback; one runtime-agent (in this process, as the
service builds it) runs the batch with `replicas` = machines, every machine's
`batch.requested` sent at once (as the planner does when they all come up together). Per run:

- wall: from the batch's `in_progress_at` to its `completed_at` (the agent's own stamps);
- the engine bound: requests x latency / (in flight x machines), what no dispatcher can beat;
- speed-up against the 1-machine run (the issue's target: >= 0.8 x machines up to 8); the runs
  go in the order given, so `--machines 8,4,2,1` runs the long one last and prints the
  comparison again once it is known;
- machine-seconds: for each machine, from `in_progress_at` to its `batch.machine_done`, summed
  (the issue's target: within 10% of the 1-machine total);
- after-last: the longest time from a machine's last answer (its `dispatch_ended_at`) to its
  `batch.machine_done` (what it is held with no work; the issue's target: < 5 s). The
  planner's release and the provider's terminate come on top of it in a full stack.

After each run the output file is read back, streamed: each custom_id once, in input order.
At the end the peak resident memory (VmHWM) of every process is printed: this one (the agent
and the driver), the database, the SSH host, and the largest of the engine simulators.

The resource-manager, planner and RunPod simulator are not in this loop: the agent side is
what decides when a machine has nothing left, and its figures are these.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from neobatch.sim.bench.memory import peak_rss_mb

BENCH_MAX_INPUT_BYTES = 2 * 1024**3
PLACEHOLDER = [sys.executable, "-c", "import time; time.sleep(86400)"]


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m neobatch.sim.bench.scale")
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--machines", default="1,2,4,8")
    p.add_argument("--latency-ms", type=float, default=20.0, help="engine latency per request")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight per machine")
    p.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return p.parse_args(argv)


async def _upload(db: Any, requests: int) -> str:
    from neobatch.common import filestore
    from neobatch.sim.devstack.sample_batch import sample_request

    async def chunks() -> Any:
        import json

        buf: list[bytes] = []
        for i in range(1, requests + 1):
            buf.append(json.dumps(sample_request(i, "sim-model")).encode() + b"\n")
            if len(buf) >= 5000:
                yield b"".join(buf)
                buf = []
        if buf:
            yield b"".join(buf)

    file_id = filestore.new_file_id()
    await filestore.save_file(db, file_id, "scale.jsonl", chunks(), purpose="batch", owner="b")
    return file_id


async def _one_run(rig: Any, engines: list[int], file_id: str, args: Any) -> dict[str, Any]:
    from neobatch.common.contracts import (
        BatchMachineDone,
        BatchRequested,
        ClientSpec,
        EngineSpec,
        SshEndpoint,
        decode_event,
    )
    from neobatch.common.settings import CommonSettings
    from neobatch.runtime_agent.app import build_agent
    from neobatch.runtime_agent.settings import AgentSettings

    ns = f"s{uuid.uuid4().hex[:10]}"
    settings = AgentSettings(
        # The operator's higher ceiling for large batches (OpenAI's 50,000 is the default).
        common=CommonSettings(
            mongo_url=rig.mongo_url,
            db_name="bench",
            namespace=ns,
            max_batch_requests=max(args.requests, 50_000),
            max_batch_input_bytes=BENCH_MAX_INPUT_BYTES,
        ),
        ssh_key_file=str(rig.key_file),
        max_batches=max(8, len(engines)),
    )
    agent = build_agent(settings)
    await agent.store.ensure_indexes()
    runner = asyncio.create_task(agent.runner.run())
    batch_id = f"batch_{uuid.uuid4().hex}"
    target = SshEndpoint(host="127.0.0.1", port=rig.ssh_port, username=getpass.getuser())
    client = ClientSpec(max_concurrency=args.concurrency, adaptive_concurrency=False)
    try:
        for port in engines:
            engine = EngineSpec(
                serving_name="sim-model",
                model_uri="bench://sim",
                command=[*PLACEHOLDER, "--port", str(port)],
                port=port,
                ready_timeout_seconds=60.0,
            )
            event = BatchRequested(
                batch_id=batch_id,
                job_id=f"job_{batch_id}",
                provision_id=f"prov_{uuid.uuid4().hex}",
                input_file_id=file_id,
                endpoint="/v1/chat/completions",
                owner="b",
                target=target,
                engine=engine,
                client=client,
                replicas=len(engines),
            )
            await agent.handlers.on_batch_requested(event)
        deadline = time.monotonic() + args.timeout
        while True:
            batch = await agent.store.find_batch(batch_id)
            if batch is not None and batch.status.is_terminal:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch not finished after {args.timeout}s")
            await asyncio.sleep(0.2)
        db = agent.runtime.db
        doc = await db["batches"].find_one({"_id": batch_id})
        if "in_progress_at" not in doc:
            raise RuntimeError(f"batch {batch.status.value}: {doc.get('error_message')}")
        started, ended = doc["in_progress_at"], doc.get("completed_at") or doc["updated_at"]
        done: dict[str, Any] = {}
        async for row in db["outbox"].find({"subject": f"{ns}.batch.machine_done"}):
            event = decode_event(row["payload"], BatchMachineDone)
            done[event.provision_id] = event.occurred_at
        machines = await agent.store.machines.list_machines(batch_id)
        seconds = [(done[m.provision_id] - started).total_seconds() for m in machines]
        after = [
            (done[m.provision_id] - m.dispatch_ended_at).total_seconds()
            for m in machines
            if m.dispatch_ended_at is not None
        ]
        starts = [m.dispatch_started_at for m in machines if m.dispatch_started_at]
        ends = [m.dispatch_ended_at for m in machines if m.dispatch_ended_at]
        if not machines:  # one machine runs as a batch always has (no machine documents)
            starts, ends = [doc.get("dispatch_started_at")], [doc.get("dispatch_ended_at")]
            seconds = [(ended - started).total_seconds()]
        first, last = (
            min(filter(None, starts), default=started),
            max(filter(None, ends), default=ended),
        )
        verified = await _verify_output(db, batch.output_file_id, args.requests)
        return {
            "verified": verified,
            "to_dispatch": (first - started).total_seconds(),
            "dispatch": (last - first).total_seconds(),
            "to_end": (ended - last).total_seconds(),
            "machines": len(engines),
            "status": batch.status.value,
            "completed": batch.request_counts.completed,
            "wall": (ended - started).total_seconds(),
            "machine_seconds": sum(seconds),
            "after_last": max(after) if after else 0.0,
            "shares": sorted((m.lines_completed for m in machines), reverse=True),
        }
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await agent.runtime.mongo.close()


async def _verify_output(db: Any, file_id: str | None, requests: int) -> str:
    """Line i of the output is request-i's, for every i: "ok", else what is wrong first."""
    import msgspec

    from neobatch.common import filestore

    if file_id is None:
        return "no output file"
    decoder = msgspec.json.Decoder()
    count = 0
    async for line in filestore.iter_lines(db, file_id):
        if not line.strip():
            continue
        count += 1
        custom_id = decoder.decode(line).get("custom_id")
        if custom_id != f"request-{count}":
            return f"line {count} is {custom_id!r}, expected 'request-{count}'"
    return "ok" if count == requests else f"{count} lines, expected {requests}"


def _print_memory(rig: Any, engines: list[Any]) -> None:
    rows = [("agent (this process)", peak_rss_mb())]
    rows += [(proc.name, peak_rss_mb(proc.pid)) for proc in rig.processes]
    if engines:
        rows.append(
            (
                f"engine simulator (largest of {len(engines)})",
                max(peak_rss_mb(e.pid) for e in engines),
            )
        )
    print("peak RSS (VmHWM): " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in rows), flush=True)


async def _bench(args: Any, workdir: Path) -> list[dict[str, Any]]:
    from pymongo import AsyncMongoClient

    from neobatch.sim.bench.dispatch.rig import BenchRig
    from neobatch.sim.testing import servers

    rig = BenchRig(workdir, None, on_disk=True)
    rig.start()
    counts = [int(x) for x in args.machines.split(",") if x.strip()]
    engines: list[Any] = []
    ports: list[int] = []
    try:
        for n in range(max(counts)):
            port = servers.free_port()
            cli = ["--host", "127.0.0.1", "--port", str(port), "--model", "sim-model"]
            cli += ["--latency-ms", str(args.latency_ms)]
            proc = servers.start_python_module(
                "neobatch.sim.engine", cli, log_path=workdir / f"logs/engine-{n}.log"
            )
            servers.wait_port("127.0.0.1", port, 30, process=proc)
            engines.append(proc)
            ports.append(port)
        mongo: Any = AsyncMongoClient(rig.mongo_url, tz_aware=True)
        file_id = await _upload(mongo["bench"], args.requests)
        await mongo.close()
        rows = []
        for count in counts:
            row = await _one_run(rig, ports[:count], file_id, args)
            rows.append(row)
            _print_row(row, _one_machine(rows), args)
        if len(rows) > 1 and rows[0]["machines"] != 1 and _one_machine(rows) is not None:
            print("against the 1-machine run (it ran after these):", flush=True)
            for row in rows:
                _print_row(row, _one_machine(rows), args)
        _print_memory(rig, engines)
        return rows
    finally:
        for proc in engines:
            proc.stop()
        rig.stop()


def _one_machine(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((row for row in rows if row["machines"] == 1), None)


def engine_bound_seconds(
    requests: int, machines: int, latency_ms: float, concurrency: int
) -> float:
    """The fastest any dispatcher could finish: every engine slot busy, nothing else costing time."""
    return requests * latency_ms / 1000.0 / (concurrency * machines)


def _print_row(row: dict[str, Any], base: dict[str, Any] | None, args: Any) -> None:
    bound = engine_bound_seconds(args.requests, row["machines"], args.latency_ms, args.concurrency)
    against = "(no 1-machine run yet)"
    if base is not None and row["wall"] and base["machine_seconds"]:
        speedup = base["wall"] / row["wall"]
        ratio = row["machine_seconds"] / base["machine_seconds"]
        against = (
            f"speed-up {speedup:5.2f} ({speedup / row['machines']:.2f}/m)  "
            f"machine-s {row['machine_seconds']:9.1f} ({ratio:4.2f} x 1)"
        )
    print(
        f"{row['machines']:>2} machines  {row['status']:<9} {row['completed']:>8} done  "
        f"wall {row['wall']:8.2f} s (engine bound {bound:.1f} s)  {against}  "
        f"after-last max {row['after_last']:5.2f} s  shares {row['shares']}  "
        f"output {row['verified']}\n"
        f"            (in_progress -> first dispatch {row['to_dispatch']:.2f} s, dispatch "
        f"{row['dispatch']:.2f} s, last answer -> completed {row['to_end']:.2f} s)",
        flush=True,
    )


def main(argv: list[str]) -> int:
    args = _parse(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    print(
        f"bench:scale: {args.requests} requests, engine latency {args.latency_ms} ms, "
        f"{args.concurrency} in flight per machine; work dir {workdir}",
        flush=True,
    )
    try:
        asyncio.run(_bench(args, workdir))
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
