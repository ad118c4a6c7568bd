"""Issue 15, one batch on many machines: the planner's decisions as a table.

(job with its machines, event) → (new status, emitted subjects, each machine's state after).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from neobatch.common.contracts import (
    BatchMachineDone,
    BatchMachineWanted,
    BatchStatus,
    BatchStatusReported,
    BatchTerminal,
    Event,
    JobCancelRequested,
    JobQueued,
    JobStatus,
    ProvisionFailed,
    ProvisionLost,
    ProvisionReleased,
    ProvisionRunning,
    RequestCounts,
    SshEndpoint,
)
from neobatch.planner.jobs import DeadlinePassed, Job, decide
from neobatch.planner.machines import Machine
from neobatch.planner.policy import Limits

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SPEC = {"engine": {"type": "vllm"}, "model_source": {"uri": "org/m"}, "accelerator": {"type": "A"}}
ENDPOINT = SshEndpoint(host="127.0.0.1", port=2222, username="me")
S = JobStatus
HANDED_OVER = {S.SUBMITTING, S.BATCH_CREATED, S.IN_PROGRESS, S.FINALIZING}
# Short names for machine states in the table.
REQ, RUN, REL, GONE, FAIL = "requested", "running", "releasing", "released", "failed"


def job(status: JobStatus, states: str, **overrides: object) -> Job:
    """A 3-machine job; `states` gives each provision's state in order (prov_1_1, ...)."""
    machines = [Machine(f"prov_1_{n}", state) for n, state in enumerate(states.split(), 1)]
    base: dict[str, object] = {
        "id": "job_1",
        "status": status,
        "batch_id": "batch_1",
        "provision_id": "prov_1_1",
        "batch_handed_over": status in HANDED_OVER,
        "template_spec": SPEC,
        "replicas": 3,
        "machines": machines,
    }
    base.update(overrides)
    return Job(**base)  # type: ignore[arg-type]


def running(n: int, provider: str = "runpod") -> ProvisionRunning:
    return ProvisionRunning(
        provision_id=f"prov_1_{n}", job_id="job_1", provider=provider, endpoint=ENDPOINT
    )


def failed(n: int) -> ProvisionFailed:
    return ProvisionFailed(
        provision_id=f"prov_1_{n}", job_id="job_1", code="NoCapacity", reason="-"
    )


def lost(n: int) -> ProvisionLost:
    return ProvisionLost(provision_id=f"prov_1_{n}", job_id="job_1", reason="pod deleted")


def done(n: int, reason: str = "no_work_left") -> BatchMachineDone:
    return BatchMachineDone(
        batch_id="batch_1",
        job_id="job_1",
        provision_id=f"prov_1_{n}",
        reason=reason,
        lines_completed=40,
        lines_failed=2,
    )


def wanted(lines_left: int = 12) -> BatchMachineWanted:
    return BatchMachineWanted(batch_id="batch_1", job_id="job_1", lines_left=lines_left)


def released(n: int) -> ProvisionReleased:
    return ProvisionReleased(provision_id=f"prov_1_{n}", job_id="job_1")


def report(status: BatchStatus) -> BatchStatusReported:
    return BatchStatusReported(
        batch_id="batch_1",
        job_id="job_1",
        status=status,
        request_counts=RequestCounts(total=90, completed=30),
        lines_by_machine={"prov_1_1": 20, "prov_1_2": 10},
    )


def terminal(status: BatchStatus) -> BatchTerminal:
    return BatchTerminal(batch_id="batch_1", job_id="job_1", status=status)


RELEASE, REQUEST, JOIN = "provision.release_requested", "provision.requested", "batch.requested"
REMOVED, CHANGED, STOP = "batch.machine_removed", "job.status_changed", "batch.cancel_requested"

CASES: list[tuple[str, Job, Event | DeadlinePassed, JobStatus | None, list[str], str]] = [
    (
        "placement asks for one provision per machine",
        job(S.QUEUED, "", provision_id=None),
        JobQueued(job_id="job_1"),
        S.RESOURCE_PREPARING,
        [REQUEST, REQUEST, REQUEST, CHANGED],
        "requested requested requested",
    ),
    (
        "the batch starts on the first machine up",
        job(S.RESOURCE_PREPARING, "requested requested requested"),
        running(2),
        S.SUBMITTING,
        [JOIN, CHANGED],
        "requested running requested",
    ),
    (
        "a later machine joins the running batch",
        job(S.IN_PROGRESS, "running requested requested"),
        running(3, "lambdaCloud"),
        None,
        [JOIN],
        "running requested running",
    ),
    (
        "a machine up while the batch finalizes is released at once",
        job(S.FINALIZING, "running requested releasing"),
        running(2),
        None,
        [RELEASE],
        "running releasing releasing",
    ),
    (
        "a machine up after the work ran out is released at once",
        job(S.IN_PROGRESS, "running requested releasing", work_exhausted=True),
        running(2),
        None,
        [RELEASE],
        "running releasing releasing",
    ),
    (
        "a running report for a machine already running changes nothing",
        job(S.IN_PROGRESS, "running running requested"),
        running(2),
        None,
        [],
        "running running requested",
    ),
    (
        "a machine that cannot be had does not hold the others back",
        job(S.RESOURCE_PREPARING, "requested requested requested"),
        failed(1),
        None,
        [RELEASE],
        "failed requested requested",
    ),
    (
        "a joiner that cannot be had leaves the batch running",
        job(S.IN_PROGRESS, "running requested running"),
        failed(2),
        None,
        [RELEASE],
        "running failed running",
    ),
    (
        "the job fails for provisioning only when no machine could be had",
        job(S.RESOURCE_PREPARING, "failed failed requested"),
        failed(3),
        S.RESOURCE_FAILED,
        [RELEASE, CHANGED],
        "failed failed failed",
    ),
    (
        "a machine with no work left is released at once, and those still coming up",
        job(S.IN_PROGRESS, "running running requested"),
        done(1),
        None,
        [RELEASE, RELEASE],
        "releasing running releasing",
    ),
    (
        "a machine whose engine failed is released; the others go on",
        job(S.IN_PROGRESS, "running running requested"),
        done(2, "engine_failed"),
        None,
        [RELEASE],
        "running releasing requested",
    ),
    (
        "a repeated machine_done changes nothing",
        job(S.IN_PROGRESS, "releasing running requested"),
        done(1),
        None,
        [],
        "releasing running requested",
    ),
    (
        "a machine lost mid-run: the agent is told, a replacement is leased",
        job(S.IN_PROGRESS, "running running running"),
        lost(2),
        None,
        [REMOVED, RELEASE, REQUEST],
        "running releasing running requested",
    ),
    (
        "a machine lost after the work ran out: the others take its chunks, no replacement",
        job(S.IN_PROGRESS, "running running releasing", work_exhausted=True),
        lost(2),
        None,
        [REMOVED, RELEASE],
        "running releasing releasing",
    ),
    (
        "replacements are bounded (at most min(replicas, attempts - 1) per job)",
        job(S.IN_PROGRESS, "running releasing releasing releasing running"),
        lost(5),
        None,
        [REMOVED, RELEASE],
        "running releasing releasing releasing releasing",
    ),
    (
        "the last machine lost with work left: back to provisioning, as with one machine",
        job(S.IN_PROGRESS, "releasing running releasing", work_exhausted=True),
        lost(2),
        S.RESOURCE_PREPARING,
        [REMOVED, RELEASE, REQUEST, CHANGED],
        "releasing releasing releasing requested",
    ),
    (
        "a loss reported for a machine already released is ignored",
        job(S.IN_PROGRESS, "releasing running running"),
        lost(1),
        None,
        [],
        "releasing running running",
    ),
    (
        "the batch ends: every machine still held is released",
        job(S.IN_PROGRESS, "running running requested"),
        terminal(BatchStatus.COMPLETED),
        S.COMPLETED,
        [RELEASE, RELEASE, RELEASE, CHANGED],
        "releasing releasing releasing",
    ),
    (
        "the batch ends after some machines were done: only the held ones are released",
        job(S.FINALIZING, "releasing released running"),
        terminal(BatchStatus.COMPLETED),
        S.COMPLETED,
        [RELEASE, CHANGED],
        "releasing released releasing",
    ),
    (
        "cancel reaches the agent once; machines still coming up are released now",
        job(S.IN_PROGRESS, "running running requested"),
        JobCancelRequested(job_id="job_1"),
        S.CANCELLING,
        [STOP, RELEASE, CHANGED],
        "running running releasing",
    ),
    (
        "cancel while provisioning releases every machine",
        job(S.RESOURCE_PREPARING, "requested requested failed"),
        JobCancelRequested(job_id="job_1"),
        S.CANCELLING,
        [RELEASE, RELEASE, CHANGED],
        "releasing releasing failed",
    ),
    (
        "cancelled once the last machine's release is confirmed",
        job(S.CANCELLING, "released releasing failed"),
        released(2),
        S.CANCELLED,
        [CHANGED],
        "released released failed",
    ),
    (
        "a release confirmed while others are still held only records it",
        job(S.CANCELLING, "releasing releasing failed"),
        released(2),
        None,
        [],
        "releasing released failed",
    ),
    (
        "a machine lost during a cancel: the cancel goes on on the others",
        job(S.CANCELLING, "running running releasing", batch_handed_over=True),
        lost(1),
        None,
        [REMOVED, RELEASE],
        "releasing running releasing",
    ),
    (
        "expiry stops the batch once and releases every machine",
        job(S.IN_PROGRESS, "running running requested"),
        DeadlinePassed("job_1"),
        S.EXPIRED,
        [STOP, RELEASE, RELEASE, RELEASE, CHANGED],
        "releasing releasing releasing",
    ),
    (
        "lines left after every machine ended: one more machine is leased",
        job(S.IN_PROGRESS, "released released releasing", work_exhausted=True),
        wanted(),
        None,
        [REQUEST],
        "released released releasing requested",
    ),
    (
        "lines left and a machine already coming up: nothing more is leased",
        job(S.IN_PROGRESS, "released released requested"),
        wanted(),
        None,
        [],
        "released released requested",
    ),
    (
        "lines left and no machine may be leased any more: the job fails instead of waiting",
        job(S.IN_PROGRESS, "released released released released released"),
        wanted(),
        S.FAILED,
        [STOP, CHANGED],
        "released released released released released",
    ),
    (
        "lines left while cancelling: the cancel ends the batch, no machine is leased",
        job(S.CANCELLING, "released released released", batch_handed_over=True),
        wanted(),
        None,
        [],
        "released released released",
    ),
    (
        "finalizing: a machine still coming up has nothing to do",
        job(S.IN_PROGRESS, "running releasing requested"),
        report(BatchStatus.FINALIZING),
        S.FINALIZING,
        [RELEASE, CHANGED],
        "running releasing releasing",
    ),
]


@pytest.mark.parametrize(
    ("name", "before", "event", "after", "subjects", "states"), CASES, ids=[c[0] for c in CASES]
)
def test_machines(
    name: str,
    before: Job,
    event: Event,
    after: JobStatus | None,
    subjects: list[str],
    states: str,
) -> None:
    decision = decide(before, event, NOW, Limits(max_provision_attempts=3))
    if not subjects and after is None:
        assert decision is None or (decision.status is None and not decision.events)
        if decision is None:
            assert " ".join(m.state for m in before.machines) == states
            return
    assert decision is not None
    assert decision.status is after
    assert [e.subject for e in decision.events] == subjects
    machines = decision.fields.get("machines", before.machines)
    assert " ".join(m.state for m in machines) == states


def test_each_machine_gets_its_own_batch_request_with_a_deterministic_id() -> None:
    first = decide(job(S.RESOURCE_PREPARING, "requested requested"), running(1), NOW)
    second = decide(job(S.IN_PROGRESS, "running requested"), running(2, "lambdaCloud"), NOW)
    again = decide(job(S.IN_PROGRESS, "running requested"), running(2, "lambdaCloud"), NOW)
    assert first and second and again
    one, two = first.events[0], second.events[0]
    assert (one.provision_id, two.provision_id) == ("prov_1_1", "prov_1_2")  # type: ignore[attr-defined]
    assert (one.batch_id, two.batch_id) == ("batch_1", "batch_1")  # type: ignore[attr-defined]
    assert (one.runtime, two.runtime) == ("runpod", "lambdaCloud")  # type: ignore[attr-defined]
    assert one.replicas == two.replicas == 3  # type: ignore[attr-defined]
    assert one.event_id != two.event_id and two.event_id == again.events[0].event_id


def test_a_joining_machine_keeps_the_batchs_window() -> None:
    expires = NOW.replace(hour=14)
    joined = decide(job(S.IN_PROGRESS, "running requested", expires_at=expires), running(2), NOW)
    assert joined is not None and joined.events[0].expires_at == expires  # type: ignore[attr-defined]


def test_replacement_ids_follow_on_and_a_replacement_takes_no_slot() -> None:
    decision = decide(job(S.IN_PROGRESS, "running running running"), lost(3), NOW)
    assert decision is not None and not decision.acquire_slot
    request = decision.events[-1]
    assert request.provision_id == "prov_1_4"  # type: ignore[attr-defined]


def test_each_provision_is_ranked_on_its_share_of_the_work() -> None:
    queued = job(S.QUEUED, "", provision_id=None, replicas=4, request_count=1000)
    decision = decide(queued, JobQueued(job_id="job_1"), NOW)
    assert decision is not None
    resources = [e.resource for e in decision.events[:-1]]  # type: ignore[attr-defined]
    assert [r.expected_output_tokens for r in resources] == [250 * 256] * 4
    assert [e.provision_id for e in decision.events[:-1]] == [  # type: ignore[attr-defined]
        "prov_1_1",
        "prov_1_2",
        "prov_1_3",
        "prov_1_4",
    ]


def test_lines_per_machine_are_kept_for_the_job_view() -> None:
    progress = decide(job(S.IN_PROGRESS, "running running"), report(BatchStatus.IN_PROGRESS), NOW)
    assert progress is not None
    assert progress.fields["machine_lines"] == {"prov_1_1": 20, "prov_1_2": 10}
    finished = decide(job(S.IN_PROGRESS, "running running"), done(2), NOW)
    assert finished is not None and finished.fields["machine_lines.prov_1_2"] == 42
    assert finished.fields["work_exhausted"] is True


def test_one_machine_job_lost_keeps_todays_events() -> None:
    """replicas=1 behaves exactly as before: no machine_removed, a replacement with a status."""
    single = job(S.IN_PROGRESS, "running", replicas=1)
    decision = decide(single, lost(1), NOW)
    assert decision is not None and decision.status is S.RESOURCE_PREPARING
    assert [e.subject for e in decision.events] == [RELEASE, REQUEST, CHANGED]


def test_a_machine_leased_for_lines_left_joins_the_batch_when_it_comes_up() -> None:
    before = job(S.IN_PROGRESS, "released released releasing", work_exhausted=True)
    leased = decide(before, wanted(), NOW, Limits(max_provision_attempts=3))
    assert leased is not None and leased.fields["work_exhausted"] is False
    after = job(S.IN_PROGRESS, "", machines=leased.fields["machines"], work_exhausted=False)
    joined = decide(after, running(4), NOW)
    assert joined is not None
    assert [e.subject for e in joined.events] == [JOIN]


def test_the_job_that_ran_out_of_machines_says_how_many_lines_were_left() -> None:
    before = job(S.IN_PROGRESS, "released released released released released")
    decision = decide(before, wanted(12), NOW, Limits(max_provision_attempts=3))
    assert decision is not None and decision.fields["error_code"] == "no_machine_left"
    assert "12 lines were left" in decision.fields["error_message"]
    assert "5 machines were tried (at most 5)" in decision.fields["error_message"]
