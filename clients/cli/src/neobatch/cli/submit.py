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
from neobatch.cli.validate import Checked, check_file
from neobatch.cli.watch import watch_job

if TYPE_CHECKING:
    from neobatch.cli.api import Api
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
    if options.get("max_cost") is not None:
        body["max_cost_usd"] = options["max_cost"]
    return body


def check(state: State, requests: Path, options: dict[str, Any]) -> Checked:
    """Validate `requests` locally with the server's rules; a bad line fails before any
    upload (exit 3, every bad line named)."""
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
    return checked


def upload(state: State, api: Api, requests: Path, checked: Checked) -> str:
    """Upload the checked file with a progress bar (on a terminal); its file id."""
    show = not state.json and render.err.is_terminal
    columns = (TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=render.err, disable=not show) as bar:
        task = bar.add_task("upload", total=checked.size)
        uploaded = api.upload(requests, lambda n: bar.advance(task, n))
    return str(uploaded["id"])


def run_submit(state: State, requests: Path, **options: Any) -> int:
    checked = check(state, requests, options)
    with state.api() as api:
        file_id = upload(state, api, requests, checked)
        job = api.create_job(job_body(file_id, checked.endpoint, options))
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
