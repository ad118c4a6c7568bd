"""A job's quote: for its input and template, what each candidate offer is expected to take
and cost (`POST /api/v1/jobs` with `dry_run: true`; a `max_cost_usd` is checked against it).
Pure: the service streams the file into a `TokenTally` and reads the offers cache and the
learned figures; this module prices them (arithmetic shared with the resource-manager's
ranking: `neobatch.common.costing`).

Candidates: the offers cache (`offers`, refreshed by the resource-manager) of each provider
the job may use (its `provider`, else every configured one), of a GPU family the template
accepts (`accelerator.type` and `accelerator.alternatives`), with the template's GPU count
(RunPod's catalog is priced per GPU: scaled by the count). Throughput per GPU family: learned
from this template's finished batches, else declared in the template, else
DEFAULT_THROUGHPUT_TOKENS_PER_SECOND (`throughput_source` says which). The quote is an
estimate, not a promise: it leaves out the output-file writing and release at the end (seconds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from neobatch.common.costing import (
    DEFAULT_OUTPUT_TOKENS_PER_REQUEST,
    DEFAULT_STARTUP_SECONDS,
    Estimate,
    TokenTally,
    expected_cost,
    expected_seconds,
    gpu_family,
    throughput_of,
)

# Output tokens/s one machine is assumed to reach when neither history nor the template says:
# a conservative figure for a mid-size model under vLLM batching (an H100 reaches ~10,000 on a
# 27B FP8 model in AIBrix's study; an A100 ~2,400).
DEFAULT_THROUGHPUT_TOKENS_PER_SECOND = 1000.0
# Catalog offers priced per GPU (one GPU each), scaled by the template's count.
PRICED_PER_GPU = frozenset({"runpod"})
# Offers a quote lists at most (cheapest first).
MAX_QUOTED_OFFERS = 50


class QuotedOffer(msgspec.Struct, kw_only=True):
    provider: str
    offer: str
    gpu_type: str
    gpu_family: str
    gpu_count: int
    region: str
    price_per_hour: float
    available: bool
    throughput_tokens_per_second: float
    throughput_source: str  # "learned" | "declared" | "default"
    startup_seconds: float
    expected_seconds: float
    expected_cost_usd: float


class Quote(msgspec.Struct, kw_only=True):
    """What `dry_run` answers (nothing is stored or leased), and the `quote` of a
    `quote_exceeds_max_cost` error."""

    object: str = "job.quote"
    model_id: str
    model_template_name: str
    model_template_version: str
    providers: list[str]
    requests: int
    prompt_tokens: int
    output_tokens: int
    # Per line: its max_(completion_)tokens, capped by the learned figure when there is one;
    # lines without one: "learned" (this template's history), "declared" (the template's
    # output_tokens_per_request) or "default" (DEFAULT_OUTPUT_TOKENS_PER_REQUEST).
    output_tokens_per_request: float
    output_tokens_source: str
    max_cost_usd: float | None
    # The machines the job asks for (its replicas): each offer's time is the wall time with
    # that many sharing the work, its cost that of all of them.
    machines: int = 1
    # The cheapest available offer's expected cost (else the cheapest listed); None: no offer.
    expected_cost_usd: float | None
    offers: list[QuotedOffer]


def output_basis(learned: float | None, spec: Mapping[str, Any]) -> tuple[float, str]:
    """Output tokens of a line without a limit, and where the figure comes from."""
    if learned:
        return learned, "learned"
    declared = (spec.get("placement") or {}).get("output_tokens_per_request")
    if declared:
        return float(declared), "declared"
    return float(DEFAULT_OUTPUT_TOKENS_PER_REQUEST), "default"


def accepted(spec: Mapping[str, Any]) -> tuple[list[str], int]:
    """The GPU families a template runs on (its type, then its alternatives) and its count."""
    accelerator = spec.get("accelerator") or {}
    families: list[str] = []
    for name in (accelerator.get("type") or "", *(accelerator.get("alternatives") or [])):
        family = gpu_family(str(name))
        if family and family not in families:
            families.append(family)
    return families, int(accelerator.get("count") or 1)


def candidates(
    offers: Sequence[Mapping[str, Any]], spec: Mapping[str, Any], providers: Sequence[str]
) -> list[dict[str, Any]]:
    """The cached offers the job could be placed on, priced for the template's GPU count."""
    families, count = accepted(spec)
    found: list[dict[str, Any]] = []
    for doc in offers:
        provider = str(doc.get("provider") or "")
        if provider not in providers or doc.get("family") not in families:
            continue
        have = int(doc.get("gpu_count") or 1)
        price = float(doc.get("price_per_hour") or 0.0)
        if provider in PRICED_PER_GPU and have == 1:
            price, have = price * count, count
        if have != count:
            continue
        found.append({**doc, "gpu_count": have, "price_per_hour": round(price, 6)})
    return found


def build_quote(
    *,
    template: Mapping[str, Any],
    providers: Sequence[str],
    tally: TokenTally,
    offers: Sequence[Mapping[str, Any]],
    learned_throughput: Mapping[str, float],
    learned_tokens_per_request: float | None,
    max_cost_usd: float | None,
    machines: int = 1,
) -> Quote:
    spec = template.get("spec") or {}
    per_request, source = output_basis(learned_tokens_per_request, spec)
    output = tally.output_tokens(per_request, learned=source == "learned")
    hints = spec.get("placement") or {}
    startup = hints.get("startup_seconds")
    estimate = Estimate(
        expected_output_tokens=max(output, 1),
        startup_seconds=DEFAULT_STARTUP_SECONDS if startup is None else float(startup),
        declared={str(k): float(v) for k, v in (hints.get("throughput") or {}).items()},
        learned=dict(learned_throughput),
        machines=max(1, machines),
    )
    quoted = [_priced(doc, estimate) for doc in candidates(offers, spec, providers)]
    quoted.sort(key=lambda q: (not q.available, q.expected_cost_usd, q.price_per_hour, q.offer))
    quoted = quoted[:MAX_QUOTED_OFFERS]
    return Quote(
        model_id=str(template.get("model_id") or ""),
        model_template_name=str(template.get("name") or ""),
        model_template_version=str(template.get("version") or ""),
        providers=list(providers),
        requests=tally.requests,
        prompt_tokens=tally.prompt_tokens,
        output_tokens=output,
        output_tokens_per_request=round(per_request, 3),
        output_tokens_source=source,
        max_cost_usd=max_cost_usd,
        machines=estimate.machines,
        expected_cost_usd=quoted[0].expected_cost_usd if quoted else None,
        offers=quoted,
    )


def _priced(doc: Mapping[str, Any], estimate: Estimate) -> QuotedOffer:
    family = str(doc.get("family") or gpu_family(str(doc.get("gpu_type") or "")))
    known = throughput_of(family, estimate)
    throughput, source = known or (DEFAULT_THROUGHPUT_TOKENS_PER_SECOND, "default")
    if known is None:
        estimate = msgspec.structs.replace(
            estimate, declared={**estimate.declared, family: throughput}
        )
    seconds = expected_seconds(family, estimate) or 0.0
    price = float(doc.get("price_per_hour") or 0.0)
    cost = expected_cost(price, family, estimate) or 0.0
    return QuotedOffer(
        provider=str(doc.get("provider") or ""),
        offer=str(doc.get("_id") or ""),
        gpu_type=str(doc.get("gpu_type") or ""),
        gpu_family=family,
        gpu_count=int(doc.get("gpu_count") or 1),
        region=str(doc.get("region") or ""),
        price_per_hour=price,
        available=bool(doc.get("available", True)),
        throughput_tokens_per_second=round(throughput, 3),
        throughput_source=source,
        startup_seconds=estimate.startup_seconds,
        expected_seconds=round(seconds, 3),
        expected_cost_usd=round(cost, 6),
    )


def over_cap(quote: Quote) -> bool:
    """The job's cheapest expected cost is above its `max_cost_usd`."""
    cap, cost = quote.max_cost_usd, quote.expected_cost_usd
    return cap is not None and cost is not None and cost > cap
