"""A batch through a real runtime-agent (its own process) against an engine that already runs.

The agent is built from the environment as the service builds it (``read_settings``), so its
dispatch defaults are the deployed ones and any ``NEOBATCH_*`` dispatch or ordering setting
given to the bench (``--agent-env``) applies; only the database, namespace and SSH key are the
bench's. Its job carries no ``client`` block unless the bench passes one. The template's engine
``command`` is a placeholder process (the agent starts it over SSH, health-checks ``port`` and
stops it at the end) while the real engine the bench started answers on that port: the agent
dispatches to the very engine the direct sweep measured, without a second start-up.

The figures: the batch's counts and ``dispatch_seconds``, the agent's own "dispatch ended" log
line (its rate, concurrency limit, checkpoint pauses, and whatever else the line reports), and
the output file's usage totals (prompt and cached tokens).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neobatch.sim.bench.dispatch.agent import BenchBatch, bench_batch_requested
from neobatch.sim.bench.engine.workload import MODEL


@dataclass
class EngineJob(BenchBatch):
    client: dict[str, Any] = field(default_factory=dict)  # the job's `client` block, if any
    env: dict[str, str] = field(default_factory=dict)  # extra agent settings (NEOBATCH_*)


PLACEHOLDER = [sys.executable, "-c", "import time; time.sleep(86400)"]


async def _run(job: EngineJob) -> dict[str, Any]:
    import msgspec

    from neobatch.common import filestore
    from neobatch.common.contracts import ClientSpec
    from neobatch.runtime_agent.app import build_agent
    from neobatch.runtime_agent.settings import read_settings

    env = {
        **os.environ,
        **job.env,
        "MONGO_URL": job.mongo_url,
        "NEOBATCH_DB": job.db_name,
        "NEOBATCH_NAMESPACE": f"b{uuid.uuid4().hex[:10]}",
        "NEOBATCH_SSH_KEY_FILE": job.key_file,
    }
    agent = build_agent(read_settings(env))
    await agent.store.ensure_indexes()
    runner = asyncio.create_task(agent.runner.run())
    batch_id = f"batch_{uuid.uuid4().hex}"
    event = bench_batch_requested(
        job,
        batch_id,
        serving_name=MODEL,
        model_uri="bench://real-engine",
        command=PLACEHOLDER,
        ready_timeout_seconds=60.0,
        client=msgspec.convert(job.client, ClientSpec),
    )
    started = time.perf_counter()
    await agent.handlers.on_batch_requested(event)
    try:
        deadline = time.monotonic() + job.timeout_seconds
        while True:
            batch = await agent.store.find_batch(batch_id)
            if batch is not None and batch.status.is_terminal:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch not finished after {job.timeout_seconds}s")
            await asyncio.sleep(0.1)
        total = time.perf_counter() - started
        output = b""
        if batch.output_file_id:
            db = agent.runtime.db
            output = b"".join([c async for c in filestore.iter_file(db, batch.output_file_id)])
        return {
            "batch_id": batch_id,
            "status": batch.status.value,
            "error": f"{batch.error_code}: {batch.error_message}" if batch.error_code else "",
            "completed": batch.request_counts.completed,
            "failed": batch.request_counts.failed,
            "dispatch_seconds": batch.dispatch_seconds,
            "total_seconds": total,
            "output": output.decode(),
        }
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await agent.runtime.mongo.close()


def child_main(job_json: str) -> None:
    """``--child JOB``: run the batch in this fresh process; figures as one JSON line."""
    from neobatch.common.logs import configure_logging

    # INFO: the "dispatch ended" line is what we read back from the child's log.
    configure_logging("runtime-agent", "INFO")
    figures = asyncio.run(_run(EngineJob(**json.loads(job_json))))
    print("BENCH-RESULT " + json.dumps(figures), flush=True)


def dispatch_ended(log_path: Path, batch_id: str) -> dict[str, Any]:
    """The agent's "dispatch ended" log fields for this batch (JSON log lines)."""
    found: dict[str, Any] = {}
    for raw in log_path.read_text(errors="replace").splitlines():
        if "dispatch ended" not in raw or batch_id not in raw:
            continue
        try:
            found = json.loads(raw)
        except ValueError:
            continue
    return found


def run_agent(job: EngineJob, log_path: Path) -> dict[str, Any]:
    args = [sys.executable, "-m", "neobatch.sim.bench.engine", "--child", json.dumps(asdict(job))]
    with open(log_path, "ab") as log:
        done = subprocess.run(args, stdout=subprocess.PIPE, stderr=log, check=False)
    for line in done.stdout.decode(errors="replace").splitlines():
        if line.startswith("BENCH-RESULT "):
            figures: dict[str, Any] = json.loads(line.removeprefix("BENCH-RESULT "))
            figures["dispatch_ended"] = dispatch_ended(log_path, figures["batch_id"])
            from neobatch.runtime_agent.machine.launch import workdir

            shutil.rmtree(workdir(figures["batch_id"]), ignore_errors=True)
            return figures
    raise RuntimeError(f"agent process exited {done.returncode} without a result; see {log_path}")
