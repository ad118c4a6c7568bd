"""The engine bench's three measurements and their tables (see the package docstring)."""

from __future__ import annotations

import asyncio
import getpass
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neobatch.runtime_agent.machine.launch import DEFAULT_VLLM_SWITCHES
from neobatch.sim import real_engine
from neobatch.sim.bench.dispatch.rig import BenchRig
from neobatch.sim.bench.engine import breakdown, workload
from neobatch.sim.bench.engine.agent import EngineJob, run_agent
from neobatch.sim.testing import servers

# The switches every neobatch launch adds (prefix cache, cached-token usage, no access log): the
# engine of (a) and (c) runs as neobatch would start it, for the direct client and the agent.
ENGINE_FLAGS = DEFAULT_VLLM_SWITCHES
PREFIX_CONCURRENCY = 256
_LOG_BASICS = frozenset(
    {"at", "level", "logger", "message", "batch_id", "job_id", "requests_per_second", "sent"}
)


@dataclass
class Row:
    name: str
    rps: float
    note: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0


async def _upload(mongo_url: str, db_name: str, lines: list[dict[str, Any]]) -> str:
    from pymongo import AsyncMongoClient

    from neobatch.common import filestore

    data = "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines).encode()

    async def chunks():  # type: ignore[no-untyped-def]
        yield data

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        file_id = filestore.new_file_id()
        await filestore.save_file(
            client[db_name], file_id, "bench.jsonl", chunks(), purpose="batch", owner="bench"
        )
        return file_id
    finally:
        await client.close()


class Served:
    """One real engine (prefix caching and cached-token usage on) plus the agent's rig."""

    def __init__(
        self, engine: real_engine.RealEngine, workdir: Path, extra: tuple[str, ...] = ()
    ) -> None:
        self.engine = engine
        self.extra = extra
        self.workdir = workdir
        self.port = servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rig = BenchRig(workdir / "rig", None)
        self.runs = 0

    def __enter__(self) -> Served:
        argv = self.engine.server_argv(self.port, workload.MODEL, *ENGINE_FLAGS, *self.extra)
        self.process = servers.ManagedProcess(argv, self.workdir / "engine.log", name="vllm")
        try:
            took = real_engine.wait_healthy(self.url, real_engine.START_SECONDS, self.process.alive)
            print(f"engine healthy after {took:.0f} s (log: {self.workdir / 'engine.log'})")
            self.rig.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.rig.stop()
        self.process.stop(timeout_seconds=10)

    def _agent(
        self, lines: list[dict[str, Any]], client: dict[str, Any], env: dict[str, str]
    ) -> dict[str, Any]:
        self.runs += 1
        db = f"bench_engine_{self.runs}"
        file_id = asyncio.run(_upload(self.rig.mongo_url, db, lines))
        job = EngineJob(
            mongo_url=self.rig.mongo_url,
            db_name=db,
            key_file=str(self.rig.key_file),
            ssh_host="127.0.0.1",
            ssh_port=self.rig.ssh_port,
            ssh_user=getpass.getuser(),
            input_file_id=file_id,
            engine_port=self.port,
            timeout_seconds=max(600.0, len(lines) / 5),
            client=client,
            env=env,
        )
        figures = run_agent(job, self.workdir / f"agent-{self.runs}.log")
        if figures["status"] != "completed" or figures["completed"] != len(lines):
            print(f"  neobatch run {self.runs}: {figures['status']} {figures['error']} "
                  f"completed {figures['completed']}/{len(lines)}")  # fmt: skip
        return figures

    def dispatch(
        self,
        requests: int,
        max_tokens: int,
        sweep: list[int],
        clients: list[dict[str, Any]],
        env: dict[str, str],
    ) -> list[Row]:
        lines = workload.chat_lines(requests, max_tokens)
        asyncio.run(workload.direct_run(self.url, lines[:64], 16))  # warm the engine up
        rows = []
        for level in sweep:
            run = asyncio.run(workload.direct_run(self.url, lines, level))
            rows.append(Row(f"direct aiohttp, {level} in flight", run.rps, f"{run.ok} ok"))
        for client in clients:
            figures = self._agent(lines, client, env)
            ended = figures["dispatch_ended"]
            rps = ended.get("requests_per_second") or (
                figures["completed"] / figures["dispatch_seconds"]
                if figures["dispatch_seconds"]
                else 0.0
            )
            label = "neobatch, " + (json.dumps(client) if client else "defaults (no client block)")
            # Whatever else the agent's line reports (limit, controller, checkpoint pauses...).
            note = ", ".join(f"{k}={v}" for k, v in ended.items() if k not in _LOG_BASICS)
            rows.append(Row(label, float(rps), note or f"{figures['completed']} completed"))
        return rows

    def prefix(
        self, requests: int, max_tokens: int, prompts: int, variants: list[dict[str, str]]
    ) -> list[Row]:
        rows = []

        def fresh() -> list[dict[str, Any]]:
            # Each run its own prompts (seed by run), so no run reads another's cached blocks.
            self.runs += 1
            lines = workload.prefix_lines(requests, max_tokens, prompts, seed=self.runs)
            for line in lines:
                line["body"]["messages"][0]["content"] = (
                    f"Run {self.runs}. " + line["body"]["messages"][0]["content"]
                )
            return lines

        for order in ("input order (shuffled)", "grouped by prompt"):
            lines = fresh()
            if order.startswith("grouped"):
                lines.sort(key=lambda x: x["body"]["messages"][0]["content"])
            run = asyncio.run(workload.direct_run(self.url, lines, PREFIX_CONCURRENCY))
            name = f"direct aiohttp {PREFIX_CONCURRENCY} in flight, {order}"
            note = f"{run.ok}/{run.requests} ok"
            rows.append(Row(name, run.rps, note, run.prompt_tokens, run.cached_tokens))
        for env in variants:
            figures = self._agent(fresh(), {}, env)
            out = self.workdir / f"prefix-out-{self.runs}.jsonl"
            out.write_text(figures["output"])
            ok, prompt, cached = workload.output_usage(out)
            ended = figures["dispatch_ended"]
            rps = ended.get("requests_per_second") or 0.0
            label = "neobatch, as it dispatches" + (f" with {env}" if env else "")
            rows.append(Row(label, float(rps), f"{ok}/{requests} ok", prompt, cached))
        return rows


def run_batch_vs_job(
    engine: real_engine.RealEngine, workdir: Path, requests: int, max_tokens: int
) -> dict[str, Any]:
    """vLLM's run_batch on the input, then the same input as a whole neobatch job."""
    from neobatch.sim.devstack import Ports, start_stack
    from neobatch.sim.devstack.scenario import TERMINAL, ConsoleClient

    lines = workload.chat_lines(requests, max_tokens)
    src = workload.write_jsonl(lines, workdir / "run_batch-in.jsonl")
    out = workdir / "run_batch-out.jsonl"
    argv = [
        str(engine.python), "-m", real_engine.BATCH_MODULE, "-i", str(src), "-o", str(out),
        "--model", str(engine.model), "--served-model-name", workload.MODEL,
        *real_engine.SERVE_FLAGS,
    ]  # fmt: skip
    started = time.perf_counter()
    with open(workdir / "run_batch.log", "ab") as log:
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
    run_batch_seconds = time.perf_counter() - started
    ok, _, _ = workload.output_usage(out) if out.exists() else (0, 0, 0)
    figures: dict[str, Any] = {
        "run_batch_seconds": run_batch_seconds,
        "run_batch_ok": ok,
        "run_batch_rc": done.returncode,
    }
    env = {
        "NEOBATCH_DB": "bench_engine_job",
        "PROVISIONER": "runpod",
        "NEOBATCH_SIM_TIME_FACTOR": "0.01",
        "NEOBATCH_RUNPOD_SIM_PORT": str(servers.free_port()),
        "NEOBATCH_SIM_REAL_ENGINE_PYTHON": str(engine.python),
        "NEOBATCH_LOG_LEVEL": "INFO",
    }
    stack = start_stack(workdir / "stack", Ports.free(), env)
    try:
        console = ConsoleClient.for_stack(stack)
        model_id = console.ensure_model()
        template = real_engine.template("bench-engine", engine.model, servers.free_port())
        console.create_template(model_id, template)
        started, upload_started = time.perf_counter(), time.time()
        file_id = console.upload(lines)
        job = console.create_job(file_id, model_id, "bench-engine", provider="runpod")
        job = console.wait_job(
            job["id"],
            lambda j: j["status"] in TERMINAL,
            real_engine.START_SECONDS + requests / 2,
        )
        figures["job_seconds"] = time.perf_counter() - started
        figures["job_status"] = job["status"]
        figures["job_completed"] = job["request_counts"]["completed"]
        console.close()
    finally:
        stack.stop()
    figures["job_steps"] = breakdown.job_steps(workdir / "stack" / "logs", upload_started)
    return figures


def print_dispatch(rows: list[Row], requests: int, max_tokens: int) -> None:
    best = max((r.rps for r in rows if r.name.startswith("direct")), default=0.0)
    print(f"\n(a) {requests} chat requests, {max_tokens} output tokens, one real engine")
    print(f"{'dispatcher':<64} {'req/s':>8} {'% best':>7}  notes")
    for r in rows:
        share = 100 * r.rps / best if best else 0.0
        print(f"{r.name:<64} {r.rps:>8.1f} {share:>6.0f}%  {r.note}")


def print_prefix(rows: list[Row], prompts: int) -> None:
    print(f"\n(c) shared prefixes: {prompts} system prompts of ~300 tokens, shuffled")
    print(f"{'dispatcher':<64} {'req/s':>8} {'cached/prompt tokens':>24}  notes")
    for r in rows:
        share = 100 * r.cached_tokens / r.prompt_tokens if r.prompt_tokens else 0.0
        tokens = f"{r.cached_tokens}/{r.prompt_tokens} ({share:.0f}%)"
        print(f"{r.name:<64} {r.rps:>8.1f} {tokens:>24}  {r.note}")


def print_run_batch(f: dict[str, Any], requests: int) -> None:
    print(f"\n(b) {requests} requests, start-up included")
    print(f"vLLM run_batch:         {f['run_batch_seconds']:8.1f} s  "
          f"({f['run_batch_ok']} ok, exit {f['run_batch_rc']})")  # fmt: skip
    if "job_seconds" in f:
        ratio = f["job_seconds"] / f["run_batch_seconds"] if f["run_batch_seconds"] else 0.0
        print(f"neobatch whole job:     {f['job_seconds']:8.1f} s  ({f['job_status']}, "
              f"{f['job_completed']} completed)  = {ratio:.2f}x run_batch")  # fmt: skip
        breakdown.print_steps(f.get("job_steps", []), f["job_seconds"])
