"""How the CLI shows things to a person (rich); `--json` bypasses all of this."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from neobatch.cli.errors import CliError
from neobatch.cli.progress import Figures, format_seconds

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(value: Any) -> None:
    # Plain print, not rich: scripts parse this, so no wrapping or markup.
    print(json.dumps(value, indent=2, sort_keys=False, default=str))


def print_error(error: CliError, as_json: bool) -> None:
    if as_json:
        err.file.write(json.dumps(error.as_json()) + "\n")
        return
    status = f" (HTTP {error.status})" if error.status else ""
    err.print(f"[bold red]error[/]: {error.code}{status}: {error.message}", markup=True)
    for detail in error.details[:20]:
        where = f"line {detail['line']}: " if detail.get("line") is not None else ""
        err.print(f"  {where}{detail.get('code')}: {detail.get('message')}", markup=False)
    if len(error.details) > 20:
        err.print(f"  ... and {len(error.details) - 20} more", markup=False)
    offers = cheapest_first((error.quote or {}).get("offers") or [])
    if offers:
        err.print(f"  cheapest offer: {offer_line(offers[0])}", markup=False)


def when(unix: int | None) -> str:
    if not unix:
        return "-"
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def progress_text(job: dict[str, Any]) -> str:
    counts = job.get("request_counts") or {}
    total = counts.get("total") or 0
    done = (counts.get("completed") or 0) + (counts.get("failed") or 0)
    if not total:
        return "-"
    failed = f", {counts.get('failed')} failed" if counts.get("failed") else ""
    return f"{done}/{total} ({100 * done // total}%{failed})"


def cost_text(job: dict[str, Any]) -> str:
    bill = job.get("bill") or {}
    return f"${float(bill.get('total_usd') or 0):.4f}" + ("" if bill.get("final") else "*")


def jobs_table(jobs: Iterable[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "STATUS", "PROGRESS", "COST", "CREATED"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        table.add_row(
            job["id"],
            job.get("name") or "",
            job.get("status") or "",
            progress_text(job),
            cost_text(job),
            when(job.get("created_at")),
        )
    return table


def job_details(job: dict[str, Any]) -> None:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    template = job.get("model_template_name") or "-"
    if job.get("model_template_version"):
        template += f"@{job['model_template_version']}"
    usage = job.get("usage") or {}
    rows = [
        ("id", job["id"]),
        ("name", job.get("name") or ""),
        ("status", job.get("status") or ""),
        ("model", f"{job.get('model_id') or '-'} ({job.get('model') or '-'})"),
        ("template", template),
        ("provider", job.get("provider") or (job.get("provision") or {}).get("provider") or "-"),
        ("requests", progress_text(job)),
        ("tokens", f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out"),
        (
            "cost",
            cost_text(job)
            + ("  (* not final)" if not (job.get("bill") or {}).get("final") else ""),
        ),
        ("window", job.get("completion_window") or ""),
        ("created", when(job.get("created_at"))),
        ("input", job.get("input_dataset") or "-"),
        ("output", job.get("output_dataset") or "-"),
        ("errors", job.get("error_dataset") or "-"),
    ]
    if job.get("retry_of"):
        rows.append(("retry of", job["retry_of"]))
    if job.get("retried_by"):
        rows.append(("retried by", ", ".join(job["retried_by"])))
    if job.get("error_code") or job.get("error_message"):
        rows.append(("error", f"{job.get('error_code') or ''}: {job.get('error_message') or ''}"))
    for key, value in rows:
        table.add_row(key, str(value))
    out.print(table)


def timeline(job: dict[str, Any]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("TIME", "STEP", "SOURCE", "MESSAGE"):
        table.add_column(column, overflow="fold")
    for event in job.get("events") or []:
        table.add_row(when(event.get("at")), event.get("label") or event.get("id"),
                      event.get("source") or "", event.get("message") or "")  # fmt: skip
    return table


def figures_line(figures: Figures) -> str:
    return f"{time.strftime('%H:%M:%S')}  {figures.line()}"


def watch_description(figures: Figures) -> str:
    rate = f"{figures.rate:.1f} req/s" if figures.rate is not None else "- req/s"
    eta = format_seconds(figures.eta_seconds) if figures.eta_seconds is not None else "-"
    final = "" if figures.cost_final else " so far"
    return f"{figures.status:<18} {rate:>12}  ETA {eta:>7}  ${figures.cost_usd:.4f}{final}"


def catalog_table(rows: Iterable[dict[str, Any]], columns: list[tuple[str, str]]) -> Table:
    table = Table(box=None, header_style="bold")
    for title, _ in columns:
        table.add_column(title, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for _, key in columns))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def cheapest_first(offers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Available offers before unavailable ones, each by expected cost of the whole job (the
    console's own order; sorted again so the table never depends on it)."""
    return sorted(offers, key=lambda o: (not o.get("available", True),
                                         float(o.get("expected_cost_usd") or 0),
                                         float(o.get("price_per_hour") or 0)))  # fmt: skip


def usd(value: Any) -> str:
    return "-" if value is None else f"${float(value):.4f}"


def offer_line(offer: dict[str, Any]) -> str:
    """One offer in a sentence: `runpod H100 x1 (us-east) $2.50/h: ~5m10s, $0.2153`."""
    where = f" ({offer['region']})" if offer.get("region") else ""
    return (
        f"{offer.get('provider')} {offer.get('gpu_type')} x{offer.get('gpu_count', 1)}{where} "
        f"${float(offer.get('price_per_hour') or 0):.2f}/h: "
        f"~{format_seconds(float(offer.get('expected_seconds') or 0))}, "
        f"{usd(offer.get('expected_cost_usd'))}"
    )
