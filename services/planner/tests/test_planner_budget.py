"""A job's cost cap (issue 16, planner/budget.py) over all its machines (issue 15): the cost
deadline from every machine's lease, the stop asked of the agent at it (one for the batch),
and the job `failed`/`budget_exceeded` with every machine released."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from neobatch.common.contracts import (
    BatchCancelRequested,
    BatchMachineDone,
    BatchStatus,
    BatchStatusReported,
    BatchTerminal,
    Event,
    JobStatus,
    ProvisionLost,
    ProvisionReleased,
    ProvisionReleaseRequested,
    ProvisionRequested,
    ProvisionRunning,
    SshEndpoint,
)
from neobatch.planner.budget import BUDGET_EXCEEDED, cost_deadline, spent_usd
from neobatch.planner.jobs import DeadlinePassed, Job, ProjectOverBudget, decide
from neobatch.planner.machines import Machine
from neobatch.planner.policy import Limits

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
S = JobStatus
LIMITS = Limits(budget_stop_seconds=5, cancel_seconds=30)
SPEC = {"engine": {"type": "vllm"}, "model_source": {"uri": "m"}, "accelerator": {"type": "H100"}}
HANDED_OVER = {S.SUBMITTING, S.BATCH_CREATED, S.IN_PROGRESS, S.FINALIZING}


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def up(
    n: int,
    leased: float,
    *,
    provider: str = "runpod",
    price: float = 3.60,
    ready: float | None = None,
    ended: float | None = None,
    state: str = "running",
) -> Machine:
    """Machine `prov_1_<n>` leased at `leased` s, ready at `ready` (default: the lease)."""
    return Machine(
        f"prov_1_{n}",
        state,
        provider=provider,
        price_per_hour=price,
        leased_at=at(leased),
        running_at=at(leased if ready is None else ready),
        ended_at=None if ended is None else at(ended),
    )


@pytest.mark.parametrize(
    ("cap", "machines", "expected"),
    [
        # $0.10 at $3.60/h buys 100 s; begin stopping 5 s before.
        (0.10, [up(1, 0)], 95),
        # An earlier machine, lost after 50 s, already spent half.
        (0.10, [up(1, -100, ended=-50, state="releasing"), up(2, 0)], 45),
        # Lambda bills whole minutes from the machine up (ready 10 s after the lease).
        (0.10, [up(1, 0, provider="lambdaCloud", ready=10)], 10 + 60 - 5),
        (0.001, [up(1, 0)], 0),  # not even the stop fits: stop at once
        (0.10, [up(1, -300, ended=-100, state="released"), up(2, 0)], 0),  # already over
        # Two machines at once spend twice as fast: 50 s.
        (0.10, [up(1, 0), up(2, 0)], 45),
        # One alone for 10 s ($0.01), then two: $0.09 more takes 45 s.
        (0.10, [up(1, 0), up(2, 10)], 55 - 5),
        # Per second and per minute together: at 40 s, 40 s + one started minute = $0.10.
        (0.10, [up(1, 0), up(2, 0, provider="lambdaCloud", ready=10)], 35),
        # The SSH pool's free machine adds nothing.
        (0.10, [up(1, 0), up(2, 0, provider="ssh", price=0.0)], 95),
        # A machine being released is billed until its release is confirmed.
        (0.10, [up(1, 0, state="releasing"), up(2, 0)], 45),
    ],
)
def test_the_cost_deadline_is_when_the_bill_of_every_machine_reaches_the_cap(
    cap, machines, expected
):
    assert cost_deadline(cap, machines, stop_seconds=5) == at(expected)


def test_no_cap_or_no_priced_machine_billed_on_has_no_cost_deadline():
    assert cost_deadline(None, [up(1, 0)], stop_seconds=0) is None
    assert cost_deadline(1.0, [up(1, 0, price=0.0)], stop_seconds=0) is None
    assert cost_deadline(1.0, [up(1, 0, ended=10)], stop_seconds=0) is None
    assert cost_deadline(1.0, [Machine("prov_1_1", "requested")], stop_seconds=0) is None


def test_spend_counts_lost_and_released_machines_up_to_their_end():
    machines = [up(1, -100, ended=-50), up(2, 0, provider="lambdaCloud", ready=10)]
    # 50 s at $3.60/h, and one started minute at $3.60/h.
    assert spent_usd(machines, at(20)) == pytest.approx(0.05 + 0.06)


def capped(status: JobStatus, states: list[Machine] | None = None, **fields: object) -> Job:
    base: dict[str, object] = {
        "id": "job_1",
        "status": status,
        "batch_id": "batch_1",
        "provision_id": "prov_1_1",
        "batch_handed_over": status in HANDED_OVER,
        "template_spec": SPEC,
        "max_cost_usd": 0.10,
        "expires_at": at(3600),
        "replicas": len(states or []) or 1,
        "machines": states or [],
    }
    base.update(fields)
    return Job(**base)  # type: ignore[arg-type]


def running(n: int, leased: float) -> ProvisionRunning:
    return ProvisionRunning(
        provision_id=f"prov_1_{n}",
        job_id="job_1",
        provider="runpod",
        endpoint=SshEndpoint(host="h", port=22, username="u"),
        leased_at=at(leased),
        price_per_hour=3.60,
    )


def released_ids(events: list[Event]) -> list[str]:
    return [e.provision_id for e in events if isinstance(e, ProvisionReleaseRequested)]


def test_a_capped_job_stops_at_its_cap_and_fails_budget_exceeded():
    ready = decide(capped(S.RESOURCE_PREPARING), running(1, -10), NOW, LIMITS)
    assert ready is not None and ready.status is S.SUBMITTING
    # Leased 10 s ago; $0.10 buys 100 s; the stop begins 5 s before: 85 s from now.
    assert ready.fields["budget_deadline_at"] == at(85) == ready.fields["deadline_at"]
    job = capped(S.IN_PROGRESS, [up(1, -10)], budget_deadline_at=at(85))
    # Later transitions keep the earlier cost deadline.
    report = BatchStatusReported(batch_id="batch_1", job_id="job_1", status=BatchStatus.FINALIZING)
    assert decide(job, report, NOW, LIMITS).fields["deadline_at"] == at(85)

    stop = decide(job, DeadlinePassed("job_1"), at(85), LIMITS)
    assert stop is not None and stop.status is None  # the agent ends the batch
    [event] = stop.events
    assert isinstance(event, BatchCancelRequested) and event.reason == BUDGET_EXCEEDED
    assert stop.fields["deadline_at"] == at(85 + 30)

    stopping = capped(S.IN_PROGRESS, [up(1, -10)], budget_stop_requested=True)
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
    assert released_ids(done.events) == ["prov_1_1"]
    # An agent that only cancels (no reason understood) ends the same way for the job.
    cancelled = BatchTerminal(batch_id="batch_1", job_id="job_1", status=BatchStatus.CANCELLED)
    assert decide(stopping, cancelled, at(90), LIMITS).fields["error_code"] == BUDGET_EXCEEDED
    # A batch that finished every line before the stop took effect stays completed.
    completed = BatchTerminal(batch_id="batch_1", job_id="job_1", status=BatchStatus.COMPLETED)
    assert decide(stopping, completed, at(90), LIMITS).status is S.COMPLETED


def test_each_machine_that_joins_or_leaves_moves_the_cost_deadline():
    job = capped(S.IN_PROGRESS, [up(1, 0), Machine("prov_1_2", "requested")])
    # The second machine, leased at 10 s, joins at 20 s: the bill now grows twice as fast.
    joined = decide(job, running(2, 10), at(20), LIMITS)
    assert joined is not None and joined.status is None
    assert joined.fields["budget_deadline_at"] == at(55 - 5) == joined.fields["deadline_at"]
    machines = joined.fields["machines"]
    job = capped(S.IN_PROGRESS, machines, budget_deadline_at=at(50))
    # The first has no work left at 30 s: released, but billed on until that is confirmed.
    finished = BatchMachineDone(
        batch_id="batch_1", job_id="job_1", provision_id="prov_1_1", reason="no_work_left"
    )
    releasing = decide(job, finished, at(30), LIMITS)
    assert releasing.fields["budget_deadline_at"] == at(50)
    job = capped(S.IN_PROGRESS, releasing.fields["machines"], budget_deadline_at=at(50))
    # Confirmed at 30 s: $0.03 spent on it; the second's $0.07 lasts to 80 s.
    gone = ProvisionReleased(provision_id="prov_1_1", job_id="job_1")
    confirmed = decide(job, gone, at(30), LIMITS)
    assert confirmed.fields["budget_deadline_at"] == at(80 - 5) == confirmed.fields["deadline_at"]


def test_a_lost_machine_counts_toward_the_cap_of_its_replacement():
    job = capped(S.IN_PROGRESS, [up(1, -100)])
    lost = ProvisionLost(provision_id="prov_1_1", job_id="job_1", reason="gone")
    replaced = decide(job, lost, NOW, LIMITS)
    assert replaced is not None and replaced.status is S.RESOURCE_PREPARING
    job = capped(S.RESOURCE_PREPARING, replaced.fields["machines"], provision_id="prov_1_2")
    assert spent_usd(job.machines, at(1000)) == pytest.approx(0.10)
    # The replacement starts with the cap spent: it is stopped at once.
    ready = decide(job, running(2, 0), NOW, LIMITS)
    assert ready.status is S.SUBMITTING and ready.fields["deadline_at"] == NOW


def test_a_stop_reaches_every_machine_with_one_cancel_and_no_machine_joins_after_it():
    job = capped(
        S.IN_PROGRESS,
        [up(1, 0), up(2, 0), Machine("prov_1_3", "requested")],
        budget_deadline_at=at(45),
    )
    stop = decide(job, DeadlinePassed("job_1"), at(45), LIMITS)
    assert stop is not None and stop.status is None
    cancels = [e for e in stop.events if isinstance(e, BatchCancelRequested)]
    assert [c.reason for c in cancels] == [BUDGET_EXCEEDED]
    # The machine still coming up is of no use now: released at once.
    assert released_ids(stop.events) == ["prov_1_3"]
    assert [mc.state for mc in stop.fields["machines"]] == ["running", "running", "releasing"]
    stopping = capped(
        S.IN_PROGRESS, stop.fields["machines"], budget_stop_requested=True, work_exhausted=True
    )
    assert decide(stopping, running(3, 50), at(50), LIMITS) is None
    # A machine lost during the stop is not replaced; the last one lost ends the job.
    lost = decide(
        stopping, ProvisionLost(provision_id="prov_1_1", job_id="job_1", reason="-"), at(50), LIMITS
    )
    assert lost.status is None
    assert not any(isinstance(e, ProvisionRequested) for e in lost.events)
    alone = capped(S.IN_PROGRESS, lost.fields["machines"], budget_stop_requested=True)
    last = decide(
        alone, ProvisionLost(provision_id="prov_1_2", job_id="job_1", reason="-"), at(51), LIMITS
    )
    assert last.status is S.FAILED and last.fields["error_code"] == BUDGET_EXCEEDED
    assert not any(isinstance(e, ProvisionRequested) for e in last.events)
    # The batch ends: every machine still held is released, each once.
    ended = BatchTerminal(batch_id="batch_1", job_id="job_1", status=BatchStatus.FAILED)
    done = decide(stopping, ended, at(60), LIMITS)
    assert done.status is S.FAILED and done.fields["error_code"] == BUDGET_EXCEEDED
    assert released_ids(done.events) == ["prov_1_1", "prov_1_2"]


def test_an_agent_that_never_stops_is_ended_by_the_planner_and_every_machine_released():
    stopping = capped(
        S.IN_PROGRESS,
        [up(1, 0), up(2, 0), up(3, 0, state="releasing")],
        budget_deadline_at=at(45),
        budget_stop_requested=True,
    )
    ended = decide(stopping, DeadlinePassed("job_1"), at(75), LIMITS)
    assert ended is not None and ended.status is S.FAILED
    assert ended.fields["error_code"] == BUDGET_EXCEEDED
    assert BatchCancelRequested in {type(e) for e in ended.events}
    assert released_ids(ended.events) == ["prov_1_1", "prov_1_2"]


def test_a_project_over_budget_stops_a_job_on_many_machines_once():
    job = capped(S.IN_PROGRESS, [up(1, 0), up(2, 0)], max_cost_usd=None)
    stop = decide(job, ProjectOverBudget("job_1"), at(10), LIMITS)
    assert stop is not None
    [cancel] = stop.events
    assert isinstance(cancel, BatchCancelRequested) and cancel.reason == BUDGET_EXCEEDED
    stopping = capped(S.IN_PROGRESS, [up(1, 0), up(2, 0)], budget_stop_requested=True)
    assert decide(stopping, ProjectOverBudget("job_1"), at(20), LIMITS) is None


def test_an_uncapped_job_keeps_no_cost_deadline():
    job = capped(S.IN_PROGRESS, [up(1, 0), Machine("prov_1_2", "requested")], max_cost_usd=None)
    joined = decide(job, running(2, 10), at(20), LIMITS)
    assert "budget_deadline_at" not in joined.fields and "deadline_at" not in joined.fields
