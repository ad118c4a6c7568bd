"""Offer ranking (issue 16): the expected cost of the whole job, not the price per hour."""

from __future__ import annotations

import msgspec
import pytest

from neobatch.common.contracts import ResourceRequest
from neobatch.resource_manager.offers import Offer, fits
from neobatch.resource_manager.ranking import (
    COST_PER_JOB,
    PRICE_PER_HOUR,
    Estimate,
    choose,
    expected_cost,
)


def offer(gpu: str, price: float, *, provider: str = "runpod", region: str = "EU-1") -> Offer:
    return Offer(
        provider=provider,
        gpu_type=gpu,
        gpu_description=gpu,
        gpu_count=1,
        region=region,
        price_per_hour=price,
    )


A100 = offer("NVIDIA A100 80GB PCIe", 1.2)  # cheapest per hour
H100 = offer("NVIDIA H100 80GB HBM3", 2.9)
# AIBrix's cost study (Qwen3.6-27B FP8): H100 ≈ 10,300 tok/s, A100 ≈ 2,400 tok/s.
STUDY = {"H100": 10300.0, "A100": 2400.0}
BIG_JOB = 10_000_000  # output tokens


@pytest.mark.parametrize(
    ("name", "offers", "estimate", "winner", "rule"),
    [
        (
            "declared figures: the per-hour-cheapest A100 loses to the H100 on cost per job",
            [A100, H100],
            Estimate(expected_output_tokens=BIG_JOB, declared=STUDY),
            H100,
            COST_PER_JOB,
        ),
        (
            "learned figures alone do the same",
            [H100, A100],
            Estimate(expected_output_tokens=BIG_JOB, learned=STUDY),
            H100,
            COST_PER_JOB,
        ),
        (
            "learned beats declared: an A100 that proved as fast as an H100 wins",
            [A100, H100],
            Estimate(expected_output_tokens=BIG_JOB, declared=STUDY, learned={"A100": 10300.0}),
            A100,
            COST_PER_JOB,
        ),
        (
            "a small job: start-up dominates, the per-hour-cheapest is also cheapest per job",
            [A100, H100],
            Estimate(expected_output_tokens=100_000, declared=STUDY, startup_seconds=300),
            A100,
            COST_PER_JOB,
        ),
        (
            "nothing known: price per hour",
            [H100, A100],
            Estimate(),
            A100,
            PRICE_PER_HOUR,
        ),
        (
            "figures but no output estimate: price per hour",
            [H100, A100],
            Estimate(expected_output_tokens=0, declared=STUDY),
            A100,
            PRICE_PER_HOUR,
        ),
        (
            "one family unknown: every offer by price per hour (no dollars-per-job vs per-hour)",
            [H100, A100],
            Estimate(expected_output_tokens=BIG_JOB, declared={"H100": 10300.0}),
            A100,
            PRICE_PER_HOUR,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_offer_ranking(
    name: str, offers: list[Offer], estimate: Estimate, winner: Offer, rule: str
) -> None:
    chosen = choose(offers, set(), estimate)
    assert chosen is not None
    best, placement = chosen
    assert best == winner, name
    assert placement.rule == rule
    assert placement.offer == winner.key
    assert placement.price_per_hour == winner.price_per_hour
    if rule == COST_PER_JOB:
        assert placement.expected_cost_usd == pytest.approx(
            expected_cost(winner, estimate), abs=1e-6
        )
        assert placement.throughput_tokens_per_second is not None
    else:
        assert placement.expected_cost_usd is None


def test_the_study_figures() -> None:
    """The issue's numbers: per 1M tokens the H100 is cheaper although 2.4x dearer per hour."""
    per_million = Estimate(expected_output_tokens=1_000_000, declared=STUDY, startup_seconds=0)
    h100, a100 = expected_cost(H100, per_million), expected_cost(A100, per_million)
    assert h100 == pytest.approx(0.078, abs=0.001)
    assert a100 == pytest.approx(0.139, abs=0.001)
    chosen = choose([A100, H100], set(), per_million)
    assert chosen is not None and chosen[0] == H100
    assert chosen[1].throughput_source == "declared"
    assert chosen[1].expected_cost_usd == pytest.approx(h100, abs=1e-6)


@pytest.mark.parametrize(
    "estimate",
    [Estimate(), Estimate(expected_output_tokens=BIG_JOB, declared=STUDY)],
    ids=["price_per_hour", "cost_per_job"],
)
def test_ties_are_deterministic(estimate: Estimate) -> None:
    """Equal cost: lower price per hour, then GPU type, then region; input order never matters."""
    same = [
        offer("NVIDIA H100 80GB HBM3", 2.9, region="US-2"),
        offer("NVIDIA H100 80GB HBM3", 2.9, provider="lambdaCloud", region="US-1"),
        offer("NVIDIA H100 80GB HBM3", 2.9, region="EU-1"),
        offer("NVIDIA H100 80GB HBM3", 2.9, provider="lambdaCloud", region="EU-1"),
    ]
    picks = {choose(order, set(), estimate)[0].key for order in (same, same[::-1])}  # type: ignore[index]
    assert picks == {"lambdaCloud:NVIDIA H100 80GB HBM3@EU-1"}


def test_tried_and_unavailable_offers_are_skipped() -> None:
    estimate = Estimate(expected_output_tokens=BIG_JOB, declared=STUDY)
    gone = offer("NVIDIA H100 80GB HBM3", 2.0, region="US-9")
    sold_out = msgspec.structs.replace(offer("NVIDIA H100 80GB HBM3", 1.0), available=False)
    offers = [A100, H100, gone, sold_out]
    chosen = choose(offers, {gone.key}, estimate)
    assert chosen is not None and chosen[0] == H100
    chosen = choose(offers, {gone.key, H100.key}, estimate)
    assert chosen is not None and chosen[0] == A100
    assert chosen[1].rule == COST_PER_JOB and chosen[1].candidates == 1
    assert choose(offers, {gone.key, H100.key, A100.key}, estimate) is None


def test_a_template_may_accept_several_gpu_types() -> None:
    """Without alternatives only the requested family fits; with them, both are candidates."""
    only_h100 = ResourceRequest(accelerator_type="H100")
    either = ResourceRequest(accelerator_type="H100", accelerator_alternatives=["A100-80GB"])
    assert [fits(o, only_h100) for o in (A100, H100)] == [False, True]
    assert [fits(o, either) for o in (A100, H100)] == [True, True]
    # "A10" is not "A100".
    assert not fits(offer("NVIDIA A10", 0.5), either)
