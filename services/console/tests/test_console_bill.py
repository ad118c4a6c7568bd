"""The bill arithmetic (jobs/bill.py), as tables: provider rounding, time split, totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from neobatch.common.billing import billed_seconds
from neobatch.console.jobs.batch_view import batch_view
from neobatch.console.jobs.bill import bill_of

T0 = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("elapsed", "increment", "billed"),
    [
        (0, 1, 0),
        (0.001, 1, 1),
        (1.0, 1, 1),
        (1.2, 1, 2),
        (59.9, 1, 60),
        (0.5, 60, 60),
        (60.0, 60, 60),
        (60.001, 60, 120),
        (3599.5, 60, 3600),
        (-3, 60, 0),
    ],
)
def test_billed_seconds_round_a_started_increment_up(elapsed, increment, billed):
    assert billed_seconds(elapsed, increment) == billed


def provision(pid, provider, price, leased, ready, releasing, released, **lease):
    return {
        "_id": pid,
        "job_id": "job_1",
        "provider": provider,
        "leased_at": at(leased),
        "running_at": at(ready) if ready is not None else None,
        "releasing_at": at(releasing) if releasing is not None else None,
        "released_at": at(released) if released is not None else None,
        "lease": {
            "provider": provider,
            "gpu_type": lease.get("gpu_type", "H100"),
            "gpu_count": 1,
            "region": "r1",
            "price_per_hour": price,
        },
    }


def job(**fields):
    return {
        "_id": "job_1",
        "batch_id": "batch_1",
        "status": "completed",
        "provision_id": "prov_b",
        "usage": {"input_tokens": 900, "output_tokens": 250_000, "cached_tokens": 400},
        "in_progress_at": at(100),
        "finalizing_at": at(160),
        **fields,
    }


# provider, price $/h, (leased, ready, releasing, released) → billed seconds, usd
@pytest.mark.parametrize(
    ("provider", "price", "times", "seconds", "usd"),
    [
        ("runpod", 3.6, (0, 40, 170, 170.4), 171, 0.171),
        ("lambdaCloud", 2.49, (0, 40, 170, 170.4), 180, 0.1245),
        ("lambdaCloud", 2.49, (0, 40, 50, 60.0), 60, 0.0415),
        ("ssh", 0.0, (0, 40, 170, 170.4), 171, 0.0),
        ("somecloud", 1.8, (0, 1, 2, 2.5), 3, 0.0015),
    ],
)
def test_a_machine_is_billed_lease_to_confirmed_release_in_its_providers_increment(
    provider, price, times, seconds, usd
):
    billed = bill_of(job(), [provision("prov_b", provider, price, *times)], at(1000))
    machine = billed.machines[0]
    assert (machine.billed_seconds, machine.usd) == (seconds, usd)
    assert billed.total_usd == usd and billed.machine_seconds == seconds and billed.final


def test_time_is_split_into_startup_idle_busy_idle():
    billed = bill_of(job(), [provision("prov_b", "runpod", 3.6, 0, 40, 170, 170.4)], at(1000))
    m = billed.machines[0]
    assert (m.startup_seconds, m.idle_before_seconds, m.busy_seconds, m.idle_after_seconds) == (
        40.0,
        60.0,
        60.0,
        10.4,
    )
    parts = m.startup_seconds + m.idle_before_seconds + m.busy_seconds + m.idle_after_seconds
    assert parts == pytest.approx(m.held_seconds)
    assert billed.idle_seconds == 70.4
    # The agent's own dispatch times win over the job's steps when reported.
    reported = job(dispatch_started_at=at(105), dispatch_ended_at=at(150))
    m = bill_of(reported, [provision("prov_b", "runpod", 3.6, 0, 40, 170, 170.4)], at(9)).machines[
        0
    ]
    assert (m.idle_before_seconds, m.busy_seconds, m.idle_after_seconds) == (65.0, 45.0, 20.4)


def test_several_machines_sum_and_usd_per_million_output_tokens():
    lost = provision("prov_a", "runpod", 3.6, 0, 30, None, 50.0)  # lost at 50 s
    ran = provision("prov_b", "lambdaCloud", 2.4, 60, 100, 170, 170.4)
    billed = bill_of(job(), [ran, lost], at(1000))
    assert [m.provision_id for m in billed.machines] == ["prov_a", "prov_b"]
    assert [m.billed_seconds for m in billed.machines] == [50, 120]
    assert billed.machines[0].idle_before_seconds is None  # did not run the batch to its end
    assert billed.total_usd == 0.05 + 0.08
    assert billed.usd_per_million_output_tokens == pytest.approx(0.13 / 250_000 * 1e6)
    assert (billed.tokens.prompt_tokens, billed.tokens.completion_tokens) == (900, 250_000)
    assert billed.tokens.cached_tokens == 400


def test_a_held_machine_is_billed_up_to_now_and_the_bill_is_not_final():
    held = provision("prov_b", "lambdaCloud", 6.0, 0, 30, None, None)
    billed = bill_of(job(status="in_progress"), [held], at(91))
    assert billed.machines[0].billed_seconds == 120 and not billed.final  # 61 s from ready
    assert billed.machines[0].released_at is None and billed.machines[0].idle_after_seconds is None


def test_lambda_bills_from_the_machine_ready_and_not_at_all_if_it_never_was():
    booted = provision("prov_b", "lambdaCloud", 6.0, 0, 240, 250, 250.5)
    m = bill_of(job(), [booted], at(999)).machines[0]
    assert (m.billed_from, m.billed_seconds, m.usd, m.held_seconds) == (
        int(at(240).timestamp()),
        60,
        0.1,
        250.5,
    )
    never = provision("prov_b", "lambdaCloud", 6.0, 0, None, 30, 31)
    m = bill_of(job(), [never], at(999)).machines[0]
    assert (m.billed_from, m.billed_seconds, m.usd) == (None, 0, 0)
    runpod = bill_of(job(), [provision("prov_b", "runpod", 3.6, 0, 240, 250, 250.5)], at(999))
    assert runpod.machines[0].billed_seconds == 251  # RunPod bills from the create call


def test_no_lease_no_bill_and_no_output_no_unit_price():
    unleased = {"_id": "prov_b", "job_id": "job_1", "provider": "runpod", "status": "failed"}
    billed = bill_of(job(usage={}), [unleased], at(5))
    assert billed.machines == [] and billed.total_usd == 0 and billed.final
    assert billed.usd_per_million_output_tokens is None


def test_the_openai_view_carries_the_bill_as_an_extra_field():
    billed = bill_of(job(), [provision("prov_b", "runpod", 3.6, 0, 40, 170, 170.4)], at(1000))
    view = batch_view(job(), billed)
    assert view.neobatch_bill.total_usd == 0.171
    assert batch_view(job()).neobatch_bill.machines == []


def test_a_batch_on_several_machines_sums_them_and_splits_no_one_machines_time_by_it():
    """Issue 15: the batch's dispatch times are the whole batch's, not any one machine's: on a
    job of several machines each machine's time is billed in full, its split left null."""
    wide = job(resource_request={"replicas": 2}, provision_id="prov_a")
    first = provision("prov_a", "runpod", 3.6, 0, 40, 120, 120.4)  # done early, released
    second = provision("prov_b", "lambdaCloud", 2.4, 0, 60, 170, 170.4)
    billed = bill_of(wide, [first, second], at(1000))
    assert [m.billed_seconds for m in billed.machines] == [121, 120]  # Lambda: from ready
    assert billed.total_usd == pytest.approx(0.121 + 0.08)
    assert all(m.busy_seconds is None and m.idle_after_seconds is None for m in billed.machines)
    assert [m.startup_seconds for m in billed.machines] == [40.0, 60.0]
