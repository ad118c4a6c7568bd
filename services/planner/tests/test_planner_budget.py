"""A job's cost cap (issue 16, planner/budget.py): the cost deadline from the lease, the stop
asked of the agent at it, and the job `failed`/`budget_exceeded` with its machine released."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from neobatch.common.contracts import (
    BatchCancelRequested,
    BatchStatus,
    BatchStatusReported,
    BatchTerminal,
    JobStatus,
    ProvisionLost,
    ProvisionReleaseRequested,
    ProvisionRunning,
    SshEndpoint,
)
from neobatch.planner.budget import BUDGET_EXCEEDED, cost_deadline
from neobatch.planner.jobs import DeadlinePassed, Job, decide
from neobatch.planner.policy import Limits

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
S = JobStatus
LIMITS = Limits(budget_stop_seconds=5, cancel_seconds=30)
SPEC = {"engine": {"type": "vllm"}, "model_source": {"uri": "m"}, "accelerator": {"type": "H100"}}


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("cap", "spent", "price", "provider", "expected"),
    [
        # $0.10 at $3.60/h buys 100 s; begin stopping 5 s before.
        (0.10, 0.0, 3.60, "runpod", 95),
        (0.10, 0.05, 3.60, "runpod", 45),  # an earlier machine already spent half
        # Lambda bills whole minutes from the machine up (running, 10 s after the lease).
        (0.10, 0.0, 3.60, "lambdaCloud", 10 + 60 - 5),
        (0.001, 0.0, 3.60, "runpod", 0),  # not even the stop fits: stop at once
        (0.10, 0.20, 3.60, "runpod", 0),  # already over
    ],
)
def test_the_cost_deadline_is_when_the_bill_reaches_the_cap(cap, spent, price, provider, expected):
    deadline = cost_deadline(
        max_cost_usd=cap,
        spent_usd=spent,
        price_per_hour=price,
        provider=provider,
        leased_at=NOW,
        running_at=at(10),
        stop_seconds=5,
    )
    assert deadline == at(expected)


def test_no_cap_or_a_free_machine_has_no_cost_deadline():
    common = {"spent_usd": 0.0, "provider": "ssh", "leased_at": NOW, "running_at": NOW}
    assert cost_deadline(max_cost_usd=None, price_per_hour=1.0, stop_seconds=0, **common) is None
    assert cost_deadline(max_cost_usd=1.0, price_per_hour=0.0, stop_seconds=0, **common) is None


def capped(status: JobStatus, **fields: object) -> Job:
    base: dict[str, object] = {
        "id": "job_1",
        "status": status,
        "batch_id": "batch_1",
        "provision_id": "prov_1_1",
        "batch_handed_over": status is not S.RESOURCE_PREPARING,
        "template_spec": SPEC,
        "max_cost_usd": 0.10,
        "expires_at": at(3600),
    }
    base.update(fields)
    return Job(**base)  # type: ignore[arg-type]


def test_a_capped_job_stops_at_its_cap_and_fails_budget_exceeded():
    running = ProvisionRunning(
        provision_id="prov_1_1",
        job_id="job_1",
        provider="runpod",
        endpoint=SshEndpoint(host="h", port=22, username="u"),
        leased_at=at(-10),
        price_per_hour=3.60,
    )
    ready = decide(capped(S.RESOURCE_PREPARING), running, NOW, LIMITS)
    assert ready is not None and ready.status is S.SUBMITTING
    # Leased 10 s ago; $0.10 buys 100 s; the stop begins 5 s before: 85 s from now.
    assert ready.fields["budget_deadline_at"] == at(85) == ready.fields["deadline_at"]
    job = capped(S.IN_PROGRESS, budget_deadline_at=at(85), leased_at=at(-10))
    # Later transitions keep the earlier cost deadline.
    report = BatchStatusReported(batch_id="batch_1", job_id="job_1", status=BatchStatus.FINALIZING)
    assert decide(job, report, NOW, LIMITS).fields["deadline_at"] == at(85)

    stop = decide(job, DeadlinePassed("job_1"), at(85), LIMITS)
    assert stop is not None and stop.status is None  # the agent ends the batch
    [event] = stop.events
    assert isinstance(event, BatchCancelRequested) and event.reason == BUDGET_EXCEEDED
    assert stop.fields["deadline_at"] == at(85 + 30)

    stopping = capped(S.IN_PROGRESS, budget_deadline_at=at(85), budget_stop_requested=True)
    ended = BatchTerminal(
        batch_id="batch_1",
        job_id="job_1",
        status=BatchStatus.FAILED,
        error_code=BUDGET_EXCEEDED,
        error_message="stopped",
        output_file_id="file_out",
        error_file_id="file_err",
    )
    done = decide(stopping, ended, at(90), LIMITS)
    assert done is not None and done.status is S.FAILED
    assert done.fields["error_code"] == BUDGET_EXCEEDED
    assert (done.fields["output_dataset"], done.fields["error_dataset"]) == ("file_out", "file_err")
    assert ProvisionReleaseRequested in {type(e) for e in done.events}
    # An agent that only cancels (no reason understood) ends the same way for the job.
    cancelled = BatchTerminal(batch_id="batch_1", job_id="job_1", status=BatchStatus.CANCELLED)
    assert decide(stopping, cancelled, at(90), LIMITS).fields["error_code"] == BUDGET_EXCEEDED
    # A batch that finished every line before the stop took effect stays completed.
    completed = BatchTerminal(batch_id="batch_1", job_id="job_1", status=BatchStatus.COMPLETED)
    assert decide(stopping, completed, at(90), LIMITS).status is S.COMPLETED


def test_an_agent_that_never_stops_is_ended_by_the_planner_and_the_machine_released():
    stopping = capped(S.IN_PROGRESS, budget_deadline_at=at(85), budget_stop_requested=True)
    ended = decide(stopping, DeadlinePassed("job_1"), at(115), LIMITS)
    assert ended is not None and ended.status is S.FAILED
    assert ended.fields["error_code"] == BUDGET_EXCEEDED
    assert {type(e) for e in ended.events} >= {BatchCancelRequested, ProvisionReleaseRequested}


def test_a_lost_machine_counts_toward_the_cap_of_its_replacement():
    job = capped(S.IN_PROGRESS, leased_at=at(-100), lease_price_per_hour=3.60)
    lost = ProvisionLost(provision_id="prov_1_1", job_id="job_1", reason="gone")
    replaced = decide(job, lost, NOW, LIMITS)
    assert replaced is not None and replaced.status is S.RESOURCE_PREPARING
    assert replaced.fields["budget_spent_usd"] == pytest.approx(0.10)
