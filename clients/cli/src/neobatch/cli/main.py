"""`neobatch`: submit, watch, download and cancel batches from the command line.

Talks only to the console's public API (`api.py`). Configured by NEOBATCH_CONSOLE_URL and
NEOBATCH_API_KEY, or a profile (`config.py`). Exit codes: `errors.py` (and the README).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from neobatch.cli import render
from neobatch.cli.catalog import models, templates
from neobatch.cli.errors import CliError, ExitCode
from neobatch.cli.quote import run_quote
from neobatch.cli.retry import run_merge, run_retry
from neobatch.cli.state import State, emit, json_option
from neobatch.cli.submit import run_submit
from neobatch.cli.watch import download_files, watch_job

EXIT_CODES = """\b
Exit codes: 0 done (watch: the job completed); 1 unexpected error; 2 usage (bad option, no API
key); 3 the input file failed local validation; 4 the console refused (4xx: its code and
message are shown; submit --max-cost under the quote: also its cheapest offer); 5 the console
is unreachable or failed (5xx); 6 the job ended but not completed; 7 --timeout passed while
the job still ran; 130 interrupted."""

# The console's bounds on `max_cost_usd` (above 0, at most a billion).
MAX_COST = click.FloatRange(0, 1_000_000_000, min_open=True)


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--console-url", help="Console URL (else NEOBATCH_CONSOLE_URL, else the profile).")
@click.option("--profile", help="Profile in the config file (else NEOBATCH_PROFILE, or default).")
@json_option
@click.pass_context
def cli(ctx: click.Context, console_url: str | None, profile: str | None) -> None:
    """Run OpenAI-format JSONL batches on neobatch."""
    state = ctx.ensure_object(State)
    state.console_url, state.profile = console_url, profile


# --- jobs ------------------------------------------------------------------------------------


@cli.command()
@click.argument("requests", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--template", "template", help="Deployment template: NAME or NAME@VERSION.")
@click.option("--model", "model_id", help="Model id (when a template name is on several models).")
@click.option("--provider", help="Provider to lease from (ssh, runpod, lambdaCloud, ...).")
@click.option("--replicas", type=click.IntRange(1, 1024), help="Machines to run on.")
@click.option("--max-cost", type=MAX_COST, metavar="USD",
              help="Cap in USD: refused (exit 4, with the quote) when quoted above it; "
                   "stopped (budget_exceeded) when its bill reaches it.")  # fmt: skip
@click.option("--window", default="24h", show_default=True, help="Completion window (24h, 90m).")
@click.option("--name", default="", help="A name for the job.")
@click.option("--endpoint", help="Batch endpoint (default: the first line's url).")
@click.option("--watch", is_flag=True, help="Follow the job until it ends.")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True)
@click.option("--timeout", type=click.FloatRange(0), default=0, help="Stop watching after N s.")
@json_option
@click.pass_obj
def submit(state: State, requests: Path, **options: Any) -> None:
    """Validate REQUESTS locally, upload it, create the job (and --watch it)."""
    sys.exit(run_submit(state, requests, **options))


@cli.command()
@click.argument("requests", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--template", "template", help="Deployment template: NAME or NAME@VERSION.")
@click.option("--model", "model_id", help="Model id (when a template name is on several models).")
@click.option("--provider", help="Only this provider's offers (ssh, runpod, lambdaCloud, ...).")
@click.option("--replicas", type=click.IntRange(1, 1024),
              help="Machines the job would run on (checked as submit would).")  # fmt: skip
@click.option("--window", default="24h", show_default=True, help="Completion window (24h, 90m).")
@click.option("--endpoint", help="Batch endpoint (default: the first line's url).")
@json_option
@click.pass_obj
def quote(state: State, requests: Path, **options: Any) -> None:
    """What REQUESTS would take and cost on each candidate offer, cheapest first.

    Validates REQUESTS locally like submit, uploads it, asks the console for a quote
    (POST /api/v1/jobs with dry_run) and deletes the upload again: nothing is queued or
    leased. Costs are estimates from a token count of the input and the throughput expected
    on each GPU type (learned, declared by the template, or a default: the TOKENS/S column)."""
    sys.exit(run_quote(state, requests, **options))


@cli.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--after", help="Show the jobs after this id (the last id of a page).")
@json_option
@click.pass_obj
def list_jobs(state: State, limit: int, after: str | None) -> None:
    """Your jobs, newest first, a page at a time."""
    with state.api() as api:
        page = api.jobs(limit, after)

    def human() -> None:
        render.out.print(render.jobs_table(page.get("jobs") or []))
        if page.get("has_more"):
            render.out.print(f"more: neobatch list --after {page.get('last_id')}", markup=False)

    emit(state, page, human)


@cli.command()
@click.argument("job_id")
@json_option
@click.pass_obj
def get(state: State, job_id: str) -> None:
    """A job: status, counts, tokens, cost and its files."""
    with state.api() as api:
        job = api.job(job_id)
    emit(state, job, lambda: render.job_details(job))


@cli.command()
@click.argument("job_id")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True)
@click.option("--timeout", type=click.FloatRange(0), default=0, help="Stop watching after N s.")
@json_option
@click.pass_obj
def watch(state: State, job_id: str, interval: float, timeout: float) -> None:
    """Follow a job until it ends: status, counts, rate, ETA and cost."""
    with state.api() as api:
        sys.exit(watch_job(api, job_id, interval, timeout, as_json=state.json))


@cli.command()
@click.argument("job_id")
@json_option
@click.pass_obj
def cancel(state: State, job_id: str) -> None:
    """Cancel a job (a job that already ended is left as it is)."""
    with state.api() as api:
        job = api.cancel(job_id)
    emit(state, job, lambda: render.out.print(f"{job['id']} {job.get('status')}", markup=False))


@cli.command()
@click.argument("job_id")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@json_option
@click.pass_obj
def download(state: State, job_id: str, output_dir: Path, force: bool) -> None:
    """Download a job's output and error files into a directory."""
    with state.api() as api:
        files = download_files(api, job_id, output_dir, force, show=not state.json)
    if state.json:
        render.print_json({"job_id": job_id, "files": files})
    else:
        for item in files:
            render.out.print(
                f"{item['kind']}: {item['path']} ({item['bytes']} bytes)", markup=False
            )


@cli.command()
@click.argument("job_id")
@json_option
@click.pass_obj
def events(state: State, job_id: str) -> None:
    """A job's timeline: each step with its time, source and message."""
    with state.api() as api:
        job = api.job(job_id)
    emit(state, job.get("events") or [], lambda: render.out.print(render.timeline(job)))


@cli.command()
@click.argument("job_id")
@click.option("--template", "template",
              help="Another deployment template: NAME or NAME@VERSION (else the job's).")  # fmt: skip
@click.option("--replicas", type=click.IntRange(1, 1024), help="Machines (else the job's).")
@click.option("--max-cost", type=MAX_COST, metavar="USD",
              help="Cost cap in USD (else the job's); refused (exit 4) when quoted above it.")  # fmt: skip
@click.option("--watch", is_flag=True, help="Follow the new job until it ends.")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True)
@click.option("--timeout", type=click.FloatRange(0), default=0, help="Stop watching after N s.")
@json_option
@click.pass_obj
def retry(state: State, job_id: str, **options: Any) -> None:
    """Re-run the failed and unfinished lines of a job that ended, as a new job.

    The new job's input holds exactly the lines of JOB_ID's input whose request failed (its
    error file) or never finished (a cancelled, expired or failed job), as they were and in
    their order; it keeps the job's template, provider, replicas, window, metadata, client
    options and cap unless told otherwise. The job then lists it as `retried_by`; `neobatch
    merge JOB_ID` puts the results back together. Asking again while that retry runs
    answers the same retry. Exit 4 with `job_not_terminal` (JOB_ID still runs) or
    `nothing_to_retry` (every line succeeded); with --watch, the watch's exit codes."""
    sys.exit(run_retry(state, job_id, **options))


@cli.command()
@click.argument("job_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="The merged file (default: JOB_ID_merged.jsonl here).")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
@json_option
@click.pass_obj
def merge(state: State, job_id: str, output: Path | None, force: bool) -> None:
    """One JSONL of results for JOB_ID and its retries, in JOB_ID's input order.

    Follows `retried_by` from JOB_ID (retries of retries too) and writes one line per
    custom_id of JOB_ID's input, once, in the input's order: its newest successful result in
    the chain, else its newest error (a line that failed every time comes from the newest
    error file), else an error line `no_result` (no job of the chain finished it). Exit 0
    once written, whatever the lines say; --json prints the counts (succeeded, failed,
    missing) and any retry still running."""
    sys.exit(run_merge(state, job_id, output, force))


cli.add_command(templates)
cli.add_command(models)


def main(argv: list[str] | None = None) -> int:
    state = State()
    try:
        cli.main(args=argv, prog_name="neobatch", standalone_mode=False, obj=state)
    except CliError as error:
        render.print_error(error, state.json)
        return int(error.exit_code)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as error:
        error.show()
        return int(ExitCode.USAGE)
    except (KeyboardInterrupt, click.exceptions.Abort):
        render.err.print("interrupted", markup=False)
        return int(ExitCode.INTERRUPTED)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    except Exception as error:  # a bug: say so plainly, without a traceback or secrets
        render.print_error(
            CliError(f"{type(error).__name__}: {error}", code="unexpected",
                     exit_code=ExitCode.UNEXPECTED),
            state.json,
        )  # fmt: skip
        return int(ExitCode.UNEXPECTED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
