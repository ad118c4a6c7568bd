"""Which offer to try first: expected cost of the whole job, else price per hour. Pure: no I/O.

The expected cost of a job on an offer is

    price_per_hour * (expected_output_tokens / throughput / 3600 + startup_seconds / 3600)

where `throughput` is the output tokens per second one machine of that GPU family achieved for
the job's template (learned from finished batches, else declared in the template's `placement`
block) and `startup_seconds` the machine-plus-engine start-up (declared, else
DEFAULT_STARTUP_SECONDS). The figure is an approximation for ordering offers, not a quote.

Offers are ranked by that cost only when every candidate's family has a throughput figure and
the job's output is estimated (`cost_per_job`); otherwise all of them by price per hour, as
before (`price_per_hour`). Mixing the two would compare dollars per job with dollars per hour,
and guessing a figure for an unmeasured GPU could send a job to the slowest machine; an operator
who wants cost ranking across several GPU types declares a throughput for each (or lets one job
per type teach it). Ties: price per hour, GPU type, region, provider.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from neobatch.common.costing import (
    DEFAULT_STARTUP_SECONDS,
    MIN_SAMPLE_SECONDS,
    Estimate,
    Sample,
    throughput_of,
)
from neobatch.common.costing import expected_cost as _cost
from neobatch.resource_manager.offers import Offer

__all__ = ["DEFAULT_STARTUP_SECONDS", "Estimate", "Placement", "choose", "rank", "sample_of"]

COST_PER_JOB = "cost_per_job"
PRICE_PER_HOUR = "price_per_hour"


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """Why an offer was chosen: the rule and the figures it used (shown on the job)."""

    rule: str
    offer: str
    price_per_hour: float
    gpu_family: str
    expected_output_tokens: int = 0
    throughput_tokens_per_second: float | None = None
    throughput_source: str = ""  # "learned" | "declared" | ""
    startup_seconds: float | None = None
    expected_cost_usd: float | None = None
    candidates: int = 0


def expected_cost(offer: Offer, estimate: Estimate) -> float | None:
    """`neobatch.common.costing.expected_cost` of the job on `offer`."""
    return _cost(offer.price_per_hour, offer.family, estimate)


def _per_hour_key(offer: Offer) -> tuple[float, str, str, str]:
    return (offer.price_per_hour, offer.gpu_type, offer.region, offer.provider)


def rank(offers: Sequence[Offer], estimate: Estimate) -> tuple[list[Offer], str]:
    """`offers` best first, and the rule that ordered them."""
    costs = {offer.key: expected_cost(offer, estimate) for offer in offers}
    if offers and all(cost is not None for cost in costs.values()):
        ordered = sorted(offers, key=lambda o: (costs[o.key], *_per_hour_key(o)))
        return ordered, COST_PER_JOB
    return sorted(offers, key=_per_hour_key), PRICE_PER_HOUR


NOTHING_KNOWN = Estimate()


def choose(
    offers: Sequence[Offer], tried: set[str], estimate: Estimate = NOTHING_KNOWN
) -> tuple[Offer, Placement] | None:
    """The best available offer not tried yet, with the placement record that explains it."""
    candidates = [o for o in offers if o.available and o.key not in tried]
    if not candidates:
        return None
    ordered, rule = rank(candidates, estimate)
    best = ordered[0]
    placement = Placement(
        rule=rule,
        offer=best.key,
        price_per_hour=best.price_per_hour,
        gpu_family=best.family,
        expected_output_tokens=estimate.expected_output_tokens,
        candidates=len(candidates),
    )
    if rule == COST_PER_JOB:
        throughput, source = throughput_of(best.family, estimate) or (None, "")
        placement = msgspec.structs.replace(
            placement,
            throughput_tokens_per_second=throughput,
            throughput_source=source,
            startup_seconds=estimate.startup_seconds,
            expected_cost_usd=round(expected_cost(best, estimate) or 0.0, 6),
        )
    return best, placement


# --- learning: what finished batches teach -------------------------------------------------


def sample_of(
    batch_id: str,
    template_key: str,
    offer: Offer | None,
    output_tokens: int,
    seconds: float,
    requests: int = 0,
) -> Sample | None:
    """What a terminal batch teaches, if anything: only a batch run on a recorded offer of a
    known template that produced output over a measurable time."""
    if offer is None or not template_key or output_tokens <= 0 or seconds < MIN_SAMPLE_SECONDS:
        return None
    return Sample(
        batch_id=batch_id,
        template_key=template_key,
        family=offer.family,
        output_tokens=output_tokens,
        dispatch_seconds=seconds,
        requests=max(0, requests),
    )
