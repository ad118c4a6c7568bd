"""A real batch through a real runtime-agent, in a child process of its own, and its figures."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neobatch.sim.bench.dispatch.nginx import CHAT, MODEL
from neobatch.sim.bench.memory import peak_rss_mb, rss_mb


@dataclass
class BenchBatch:
    """Where a bench's agent finds its batch: the database, the uploaded input, the machine
    (loopback SSH) and the engine's port on it. Shared by the dispatch and engine benches."""

    mongo_url: str
    db_name: str
    key_file: str
    ssh_host: str
    ssh_port: int
    ssh_user: str
    input_file_id: str
    engine_port: int
    timeout_seconds: float


@dataclass
class AgentJob(BenchBatch):
    engine_command: list[str]
    concurrency: int


async def run_agent_job(job: AgentJob) -> dict[str, Any]:
    """Run one batch through a real agent; returns its figures (called in the child)."""
    import uuid

    from neobatch.runtime_agent.app import build_agent

    agent = build_agent(_agent_settings(job))
    await agent.store.ensure_indexes()
    runner = asyncio.create_task(agent.runner.run())
    batch_id = f"batch_{uuid.uuid4().hex}"
    started = time.perf_counter()
    cpu_started = time.process_time()
    await agent.handlers.on_batch_requested(_batch_requested(job, batch_id))
    try:
        batch, rss_by_status, dispatch_cpu = await _watch_batch(
            agent.store, batch_id, job.timeout_seconds
        )
        total = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        stored = len(await agent.store.finished_lines(batch_id))
        return {
            "batch_id": batch_id,
            "status": batch.status.value,
            "error": f"{batch.error_code}: {batch.error_message}" if batch.error_code else "",
            "completed": batch.request_counts.completed,
            "failed": batch.request_counts.failed,
            "stored_results": stored,
            "output_file_id": batch.output_file_id,
            "dispatch_seconds": batch.dispatch_seconds,
            "total_seconds": total,
            "cpu_seconds": cpu,
            "dispatch_cpu_seconds": dispatch_cpu,
            "rss_by_status": rss_by_status,
        }
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await agent.runtime.mongo.close()


def _agent_settings(job: AgentJob) -> Any:
    import uuid

    from neobatch.common.settings import CommonSettings
    from neobatch.runtime_agent.dispatch.policy import DispatchDefaults
    from neobatch.runtime_agent.settings import AgentSettings

    common = CommonSettings(
        mongo_url=job.mongo_url, db_name=job.db_name, namespace=f"b{uuid.uuid4().hex[:10]}"
    )
    # The bench runs a fixed concurrency (no adaptive ramp); the job's client block says so too.
    dispatch = DispatchDefaults(
        concurrency=job.concurrency, request_timeout_seconds=120.0, max_retries=2, adaptive=False
    )
    return AgentSettings(
        common=common,
        ssh_key_file=job.key_file,
        dispatch=dispatch,
        poll_interval_seconds=0.2,
        engine_stop_grace_seconds=5.0,
    )


def _batch_requested(job: AgentJob, batch_id: str) -> Any:
    from neobatch.common.contracts import ClientSpec

    return bench_batch_requested(
        job,
        batch_id,
        serving_name=MODEL,
        model_uri="bench://nginx-echo",
        command=job.engine_command,
        ready_timeout_seconds=30.0,
        client=ClientSpec(max_concurrency=job.concurrency, adaptive_concurrency=False),
    )


def bench_batch_requested(
    job: BenchBatch,
    batch_id: str,
    *,
    serving_name: str,
    model_uri: str,
    command: list[str],
    ready_timeout_seconds: float,
    client: Any,
) -> Any:
    """The `batch.requested` event a bench sends its agent: the chat batch of `job` (input file,
    engine port, SSH target) on an engine already running behind `command`."""
    import uuid

    from neobatch.common.contracts import BatchRequested, EngineSpec, SshEndpoint

    engine = EngineSpec(
        serving_name=serving_name,
        model_uri=model_uri,
        command=command,
        port=job.engine_port,
        ready_timeout_seconds=ready_timeout_seconds,
    )
    return BatchRequested(
        batch_id=batch_id,
        job_id=f"job_{uuid.uuid4().hex}",
        provision_id=f"prov_{uuid.uuid4().hex}",
        input_file_id=job.input_file_id,
        endpoint=CHAT,
        owner="bench",
        target=SshEndpoint(host=job.ssh_host, port=job.ssh_port, username=job.ssh_user),
        engine=engine,
        client=client,
    )


async def _watch_batch(
    store: Any, batch_id: str, timeout_seconds: float
) -> tuple[Any, dict[str, float], float]:
    """Poll the batch until it is terminal: (the batch, the largest RSS sampled in each status,
    the process CPU between first seeing it in_progress and first seeing it past that)."""

    deadline = time.monotonic() + timeout_seconds
    rss_by_status: dict[str, float] = {}
    cpu_dispatch = [0.0, 0.0]
    while True:
        batch = await store.find_batch(batch_id)
        if batch is not None:
            key = batch.status.value
            rss_by_status[key] = max(rss_by_status.get(key, 0.0), rss_mb())
            if key == "in_progress":
                cpu_dispatch[0] = cpu_dispatch[0] or time.process_time()
            elif cpu_dispatch[0] and not cpu_dispatch[1]:
                cpu_dispatch[1] = time.process_time()
        if batch is not None and batch.status.is_terminal:
            return batch, rss_by_status, cpu_dispatch[1] - cpu_dispatch[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch not finished after {timeout_seconds}s")
        await asyncio.sleep(0.1)


def child_main(job_json: str) -> None:
    """`--child JOB`: run the batch in this fresh process and print its figures as JSON."""
    from neobatch.common.logs import configure_logging

    # The agent's own JSON log lines (with their fields) to the child's stderr, the run's log.
    configure_logging("runtime-agent", os.environ.get("NEOBATCH_LOG_LEVEL", "WARNING"))
    job = AgentJob(**json.loads(job_json))
    baseline = peak_rss_mb()
    figures = asyncio.run(run_agent_job(job))
    figures["peak_rss_mb"] = peak_rss_mb()
    figures["startup_rss_mb"] = baseline
    # The agent's own children, reaped by now: its `ssh -L` tunnel (the OpenSSH data path).
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures["children_cpu_seconds"] = children.ru_utime + children.ru_stime
    print("BENCH-RESULT " + json.dumps(figures), flush=True)


def run_child(job: AgentJob, log_path: Path, profile: Path | None = None) -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "neobatch.sim.bench.dispatch",
        "--child",
        json.dumps(job.__dict__),
    ]
    if profile is not None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        args = [py_spy, "record", "-o", str(profile), "-f", "raw", "-r", "100", "--", *args]
    with open(log_path, "ab") as log:
        done = subprocess.run(args, stdout=subprocess.PIPE, stderr=log, check=False)
    out = done.stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("BENCH-RESULT "):
            figures: dict[str, Any] = json.loads(line.removeprefix("BENCH-RESULT "))
            # The engine's directory on the "machine" (this one): its pid file and log.
            from neobatch.runtime_agent.machine.launch import workdir

            shutil.rmtree(workdir(figures["batch_id"]), ignore_errors=True)
            return figures
    raise RuntimeError(f"agent process exited {done.returncode} without a result; see {log_path}")
