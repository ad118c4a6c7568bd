"""Following a job (`watch`, `submit --watch`) and fetching its files (`download`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from neobatch.cli import render
from neobatch.cli.api import Api
from neobatch.cli.errors import CliError, ExitCode
from neobatch.cli.progress import TERMINAL, Figures, Tracker

PLAIN_EVERY_SECONDS = (
    5.0  # without a terminal, a line per change, at most this often unless the status changed
)


def _poll(api: Api, job_id: str, deadline: float | None) -> dict[str, Any]:
    """One read of the job; a console that does not answer is asked again until the deadline."""
    while True:
        try:
            return api.job(job_id)
        except CliError as error:
            if error.exit_code is not ExitCode.UNAVAILABLE:
                raise
            if deadline is not None and time.monotonic() > deadline:
                raise
            render.err.print(f"(console not answering: {error.message}; retrying)", markup=False)
            time.sleep(2)


def watch_job(api: Api, job_id: str, interval: float, timeout: float, *, as_json: bool) -> int:
    """Poll until the job ends (or `timeout` seconds pass, 0 = no limit); its exit code."""
    deadline = time.monotonic() + timeout if timeout else None
    views = _views(api, job_id, interval, deadline)
    if render.err.is_terminal and not as_json:
        job = _follow_live(job_id, views)
    else:
        job = _follow_plain(views, quiet=as_json)
    status = job.get("status")
    if as_json:
        render.print_json(job)
    elif status in TERMINAL:
        render.out.print(f"{job_id} {status}  {render.progress_text(job)}  cost "
                         f"{render.cost_text(job)}", markup=False)  # fmt: skip
        if job.get("error_message"):
            render.out.print(f"  {job.get('error_code')}: {job['error_message']}", markup=False)
    if status == "completed":
        return int(ExitCode.OK)
    if status in TERMINAL:
        return int(ExitCode.JOB_NOT_COMPLETED)
    render.err.print(f"{job_id} still {status} after {timeout:g}s (it keeps running)", markup=False)
    return int(ExitCode.TIMEOUT)


def _views(
    api: Api, job_id: str, interval: float, deadline: float | None
) -> Iterator[tuple[dict[str, Any], Figures]]:
    """Each polled view of the job with its figures, the last one terminal or at the deadline."""
    tracker = Tracker()
    while True:
        job = _poll(api, job_id, deadline)
        yield job, tracker.update(job, time.monotonic())
        if job.get("status") in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return
        time.sleep(interval)


def _follow_plain(views: Iterator[tuple[dict[str, Any], Figures]], quiet: bool) -> dict[str, Any]:
    """Not a terminal (a pipe, a CI log): a line per status change, and progress now and then."""
    shown: tuple[str, int] | None = None
    shown_at = 0.0
    latest: dict[str, Any] = {}
    for job, figures in views:
        latest = job
        now = time.monotonic()
        key = (figures.status, figures.done)
        if (
            not quiet
            and key != shown
            and (shown is None or key[0] != shown[0] or now - shown_at >= PLAIN_EVERY_SECONDS)
        ):
            render.err.print(render.figures_line(figures), markup=False)
            shown, shown_at = key, now
    return latest


def _follow_live(job_id: str, views: Iterator[tuple[dict[str, Any], Figures]]) -> dict[str, Any]:
    columns = (
        TextColumn(job_id),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
    )
    latest: dict[str, Any] = {}
    with Progress(*columns, console=render.err) as bar:
        task = bar.add_task("", total=None)
        for job, figures in views:
            latest = job
            bar.update(task, description=render.watch_description(figures),
                       total=figures.total or None, completed=figures.done)  # fmt: skip
    return latest


def download_files(
    api: Api, job_id: str, output_dir: Path, force: bool, *, show: bool
) -> list[dict[str, Any]]:
    """The job's output and error files, written as `<job_id>_output.jsonl` and
    `<job_id>_errors.jsonl` in `output_dir`."""
    job = api.job(job_id)
    wanted = [(kind, job.get(field)) for kind, field in
              (("output", "output_dataset"), ("errors", "error_dataset"))]  # fmt: skip
    wanted = [(kind, file_id) for kind, file_id in wanted if file_id]
    if not wanted:
        raise CliError(
            f"job {job_id} has no output or error file (status {job.get('status')})",
            code="no_files",
            exit_code=ExitCode.REFUSED,
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    targets = [(kind, file_id, output_dir / f"{job_id}_{kind}.jsonl") for kind, file_id in wanted]
    for _, _, target in targets:
        if target.exists() and not force:
            raise CliError(f"{target} exists (use --force to overwrite)", code="file_exists")
    done = []
    for kind, file_id, target in targets:
        with Progress(console=render.err, disable=not show or not render.err.is_terminal) as bar:
            task = bar.add_task(f"{kind} {file_id}", total=None)
            size = api.download(file_id, target, lambda n, t=task: bar.advance(t, n))
        done.append({"kind": kind, "file_id": file_id, "path": str(target), "bytes": size})
    return done
