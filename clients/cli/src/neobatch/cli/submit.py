"""`neobatch submit`: validate locally, upload with progress, create the job, maybe watch it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from neobatch.cli import render
from neobatch.cli.errors import CliError, ExitCode
from neobatch.cli.validate import check_file
from neobatch.cli.watch import watch_job

if TYPE_CHECKING:
    from neobatch.cli.state import State


def split_template(value: str | None) -> tuple[str, str]:
    """`NAME` or `NAME@VERSION` → (name, version)."""
    if not value:
        return "", ""
    name, _, version = value.partition("@")
    if not name or (_ and not version):
        raise CliError(
            f"--template must be NAME or NAME@VERSION, got {value!r}", code="bad_template"
        )
    return name, version


def job_body(file_id: str, endpoint: str, options: dict[str, Any]) -> dict[str, Any]:
    name, version = split_template(options.get("template"))
    body: dict[str, Any] = {
        "input_dataset": file_id,
        "endpoint": endpoint,
        "completion_window": options.get("window") or "24h",
        "name": options.get("name") or "",
        "model_template_name": name,
        "model_template_version": version,
    }
    if options.get("model_id"):
        body["model_id"] = options["model_id"]
    if options.get("provider"):
        body["provider"] = options["provider"]
    if options.get("replicas"):
        body["resource_request"] = {"replicas": options["replicas"]}
    return body


def run_submit(state: State, requests: Path, **options: Any) -> int:
    split_template(options.get("template"))  # a bad --template fails before any work
    checked = check_file(requests, options.get("endpoint"))
    report = checked.report
    if not report.ok:
        details = [
            {"line": e.line, "code": e.code, "message": e.message, "param": e.param}
            for e in report.errors
        ]
        raise CliError(
            f"{requests}: {report.summary()} (nothing was uploaded)",
            code="invalid_input_file" if report.invalid_lines else report.errors[0].code,
            exit_code=ExitCode.INVALID_INPUT,
            details=details,
        )
    if not state.json:
        render.err.print(
            f"{requests}: {report.total} requests for {checked.endpoint}, valid", markup=False
        )
    with state.api() as api:
        show = not state.json and render.err.is_terminal
        columns = (TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=render.err, disable=not show) as bar:
            task = bar.add_task("upload", total=checked.size)
            uploaded = api.upload(requests, lambda n: bar.advance(task, n))
        job = api.create_job(job_body(str(uploaded["id"]), checked.endpoint, options))
        if not options.get("watch"):
            if state.json:
                render.print_json(job)
            else:
                render.out.print(f"{job['id']} {job.get('status')}", markup=False)
                render.err.print(f"follow it with: neobatch watch {job['id']}", markup=False)
            return int(ExitCode.OK)
        if not state.json:
            render.err.print(f"created {job['id']}", markup=False)
        return watch_job(
            api, job["id"], options["interval"], options["timeout"], as_json=state.json
        )
