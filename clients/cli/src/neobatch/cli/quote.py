"""`neobatch quote`: what a batch would take and cost on each candidate offer, before running it.

The console answers `POST /api/v1/jobs` with `dry_run: true` (services/console jobs/quote.py:
`Quote` with its `QuotedOffer`s); nothing is stored, queued or leased. The input is checked
and uploaded as `submit` does (the console prices the file it holds), then deleted again.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from neobatch.cli import render
from neobatch.cli.errors import CliError, ExitCode
from neobatch.cli.progress import format_seconds
from neobatch.cli.submit import check, job_body, upload

if TYPE_CHECKING:
    from neobatch.cli.state import State

QUOTE_COLUMNS = ("PROVIDER", "GPU", "REGION", "$/HOUR", "TOKENS/S", "EXPECTED TIME",
                 "EXPECTED COST", "AVAILABLE")  # fmt: skip


def quote_table(quote: dict[str, Any]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in QUOTE_COLUMNS:
        table.add_column(column, overflow="fold")
    for offer in render.cheapest_first(quote.get("offers") or []):
        table.add_row(
            str(offer.get("provider") or ""),
            f"{offer.get('gpu_type') or '-'} x{offer.get('gpu_count', 1)}",
            str(offer.get("region") or "-"),
            f"${float(offer.get('price_per_hour') or 0):.2f}",
            f"{float(offer.get('throughput_tokens_per_second') or 0):,.0f} "
            f"({offer.get('throughput_source') or '-'})",
            format_seconds(float(offer.get("expected_seconds") or 0)),
            render.usd(offer.get("expected_cost_usd")),
            "yes" if offer.get("available", True) else "no",
        )
    return table


def quote_summary(quote: dict[str, Any]) -> str:
    template = quote.get("model_template_name") or "-"
    if quote.get("model_template_version"):
        template += f"@{quote['model_template_version']}"
    return (
        f"{quote.get('requests', 0)} requests on {template} ({quote.get('model_id') or '-'}): "
        f"{quote.get('prompt_tokens', 0)} prompt tokens, {quote.get('output_tokens', 0)} output "
        f"tokens expected ({quote.get('output_tokens_per_request', 0)} per request without a "
        f"limit, {quote.get('output_tokens_source') or '-'})"
    )


def show_quote(quote: dict[str, Any]) -> None:
    render.out.print(quote_summary(quote), markup=False)
    offers = quote.get("offers") or []
    if not offers:
        providers = ", ".join(quote.get("providers") or []) or "-"
        render.out.print(f"no offer for this template's GPUs on {providers}", markup=False)
        return
    render.out.print(quote_table(quote))
    best = render.offer_line(render.cheapest_first(offers)[0])
    render.out.print(f"cheapest: {best} (an estimate, not a promise)", markup=False)


def run_quote(state: State, requests: Path, **options: Any) -> int:
    checked = check(state, requests, options)
    with state.api() as api:
        file_id = upload(state, api, requests, checked)
        try:
            quote = api.quote_job(job_body(file_id, checked.endpoint, options))
        finally:
            _forget(api, file_id)
    if state.json:
        render.print_json(quote)
    else:
        show_quote(quote)
    return int(ExitCode.OK)


def _forget(api: Any, file_id: str) -> None:
    """The uploaded copy was only for the quote: delete it (a failure is only a warning)."""
    try:
        api.delete_file(file_id)
    except CliError as error:
        render.err.print(f"(could not delete the uploaded file {file_id}: {error.code})",
                         markup=False)  # fmt: skip
