"""`neobatch retry` (a new job of a job's failed and unfinished lines) and `neobatch merge` (one
file of results in the original input's order, from the job and its retries)."""

from __future__ import annotations

import tempfile
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from neobatch.cli import render
from neobatch.cli.errors import CliError, ExitCode
from neobatch.cli.merge import MAX_CHAIN_JOBS, ResultIndex, Where, chain_order, merged_lines
from neobatch.cli.progress import TERMINAL
from neobatch.cli.submit import split_template
from neobatch.cli.watch import watch_job

if TYPE_CHECKING:
    from neobatch.cli.api import Api
    from neobatch.cli.state import State


def retry_body(
    template: str | None, replicas: int | None, max_cost: float | None
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if template:
        split_template(template)  # NAME or NAME@VERSION, checked before asking
        body["model_template"] = template
    if replicas:
        body["replicas"] = replicas
    if max_cost is not None:
        body["max_cost_usd"] = max_cost
    return body


def run_retry(state: State, job_id: str, **options: Any) -> int:
    body = retry_body(options.get("template"), options.get("replicas"), options.get("max_cost"))
    with state.api() as api:
        # One key per command: a request the console got twice still makes one job.
        job = api.retry(job_id, body, idempotency_key=f"cli-{uuid.uuid4().hex}")
        if not state.json:
            total = (job.get("request_counts") or {}).get("total")
            line = f"{job['id']} retries {total} lines of {job_id} ({job.get('status')})"
            render.out.print(line, markup=False)
        if options.get("watch"):
            return watch_job(
                api, job["id"], options["interval"], options["timeout"], as_json=state.json
            )
    if state.json:
        render.print_json(job)
    return int(ExitCode.OK)


def walk_chain(api: Api, job_id: str) -> list[dict[str, Any]]:
    """The job and every retry reachable through `retried_by`, oldest first (bounded)."""
    walked: list[dict[str, Any]] = []
    seen = {job_id}
    queue = deque([job_id])
    while queue and len(walked) < MAX_CHAIN_JOBS:
        job = api.job(queue.popleft())
        walked.append(job)
        for retry_id in job.get("retried_by") or []:
            if retry_id not in seen:
                seen.add(retry_id)
                queue.append(retry_id)
    if queue:
        render.err.print(f"(only the first {MAX_CHAIN_JOBS} jobs of the chain are read)",
                         markup=False)  # fmt: skip
    return chain_order(walked)


def _lines(file: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Each line with its offset, without its newline."""
    offset = 0
    for raw in file:
        yield offset, raw.rstrip(b"\n")
        offset += len(raw)


def run_merge(state: State, job_id: str, output: Path | None, force: bool) -> int:
    target = output or Path(f"{job_id}_merged.jsonl")
    if target.exists() and not force:
        raise CliError(f"{target} exists (use --force to overwrite)", code="file_exists")
    with state.api() as api, tempfile.TemporaryDirectory(prefix="neobatch-merge-") as tmp:
        chain = walk_chain(api, job_id)
        original = next(job for job in chain if job["id"] == job_id)
        if not original.get("input_dataset"):
            raise CliError(f"job {job_id} has no input file", code="no_input",
                           exit_code=ExitCode.REFUSED)  # fmt: skip
        input_path = Path(tmp, "input.jsonl")
        api.download(original["input_dataset"], input_path, lambda _: None)
        files: list[Path] = []
        for job in chain:
            for field in ("output_dataset", "error_dataset"):
                if job.get(field):
                    files.append(Path(tmp, f"{len(files)}.jsonl"))
                    api.download(job[field], files[-1], lambda _: None)
        summary = _write(target, input_path, files)
    running = [job["id"] for job in chain if job.get("status") not in TERMINAL]
    summary = {"job_id": job_id, "path": str(target), "jobs": [job["id"] for job in chain],
               **summary, "running": running}  # fmt: skip
    if state.json:
        render.print_json(summary)
    else:
        render.out.print(
            f"{target}: {summary['lines']} lines from {len(chain)} jobs "
            f"({summary['succeeded']} succeeded, {summary['failed']} failed, "
            f"{summary['missing']} without a result)",
            markup=False,
        )
    if running:
        render.err.print(f"still running (their results are not in yet): {', '.join(running)}",
                         markup=False)  # fmt: skip
    return int(ExitCode.OK)


def _write(target: Path, input_path: Path, files: list[Path]) -> dict[str, int]:
    """Index the result files (oldest job first), then write the merged file whole or not at
    all; how many lines of each kind."""
    index = ResultIndex()
    for number, path in enumerate(files):
        with open(path, "rb") as file:
            index.add(number, _lines(file))
    counts: Counter[str] = Counter()
    partial = target.with_name(target.name + ".part")
    try:
        with ExitStack() as stack:
            handles = [stack.enter_context(open(path, "rb")) for path in files]

            def read(where: Where) -> bytes:
                handles[where.file].seek(where.offset)
                return handles[where.file].read(where.length)

            source = stack.enter_context(open(input_path, "rb"))
            out = stack.enter_context(open(partial, "wb"))
            for merged in merged_lines((raw for _, raw in _lines(source)), index, read):
                out.write(merged.line + b"\n")
                counts[merged.kind] += 1
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    kinds = ("succeeded", "failed", "missing")
    return {"lines": sum(counts.values()), **{kind: counts[kind] for kind in kinds}}
