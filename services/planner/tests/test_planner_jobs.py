"""The job state machine, table-driven: (status, event) → (new status, emitted subjects)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from neobatch.common.contracts import (
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
from neobatch.planner.jobs import DeadLettered, DeadlinePassed, Job, decide
from neobatch.planner.policy import Limits

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SPEC = {
    "engine": {"type": "vllm", "port": 8123, "ready_timeout_seconds": 60},
    "model_source": {"uri": "org/model"},
    "accelerator": {"type": "H100", "count": 2},
}
ENDPOINT = SshEndpoint(host="127.0.0.1", port=2222, username="me")
S = JobStatus


def job(status: JobStatus, **overrides: object) -> Job:
    base: dict[str, object] = {
        "id": "job_1",
        "status": status,
        "batch_id": "batch_1",
        "provision_id": None if status is S.QUEUED else "prov_1_1",
        "batch_handed_over": status in {S.SUBMITTING, S.BATCH_CREATED, S.IN_PROGRESS, S.FINALIZING},
        "template_spec": SPEC,
        "serving_name": "served",
        "endpoint": "/v1/chat/completions",
        "input_dataset": "file_1",
        "completion_window_seconds": 3600.0,
    }
    base.update(overrides)
    return Job(**base)  # type: ignore[arg-type]


running = ProvisionRunning(
    provision_id="prov_1_1", job_id="job_1", provider="ssh", endpoint=ENDPOINT
)
failed = ProvisionFailed(
    provision_id="prov_1_1", job_id="job_1", code="NoCapacity", reason="none left"
)
released = ProvisionReleased(provision_id="prov_1_1", job_id="job_1")
cancel = JobCancelRequested(job_id="job_1")
counts = RequestCounts(total=3, completed=2, failed=1)


def lost(provision_id: str) -> ProvisionLost:
    return ProvisionLost(
        provision_id=provision_id, job_id="job_1", reason="deleted behind our back"
    )


def status_report(status: BatchStatus) -> BatchStatusReported:
    return BatchStatusReported(
        batch_id="batch_1", job_id="job_1", status=status, request_counts=counts
    )


def terminal(status: BatchStatus, code: str = "") -> BatchTerminal:
    return BatchTerminal(
        batch_id="batch_1",
        job_id="job_1",
        status=status,
        request_counts=counts,
        error_code=code,
        error_message=code,
    )


CASES: list[tuple[str, Job, Event, JobStatus | None, list[str]]] = [
    (
        "queued starts provisioning",
        job(S.QUEUED),
        JobQueued(job_id="job_1"),
        S.RESOURCE_PREPARING,
        ["provision.requested", "job.status_changed"],
    ),
    (
        "replayed job.queued does nothing",
        job(S.RESOURCE_PREPARING),
        JobQueued(job_id="job_1"),
        None,
        [],
    ),
    ("cancel while queued", job(S.QUEUED), cancel, S.CANCELLED, ["job.status_changed"]),
    (
        "queued with cancel recorded",
        job(S.QUEUED, cancel_requested=True),
        JobQueued(job_id="job_1"),
        S.CANCELLED,
        ["job.status_changed"],
    ),
    (
        "machine ready submits the batch",
        job(S.RESOURCE_PREPARING),
        running,
        S.SUBMITTING,
        ["batch.requested", "job.status_changed"],
    ),
    (
        "machine ready for another provision",
        job(S.RESOURCE_PREPARING, provision_id="prov_other"),
        running,
        None,
        [],
    ),
    (
        "provisioning failed",
        job(S.RESOURCE_PREPARING),
        failed,
        S.RESOURCE_FAILED,
        ["provision.release_requested", "job.status_changed"],
    ),
    (
        "cancel while provisioning releases",
        job(S.RESOURCE_PREPARING),
        cancel,
        S.CANCELLING,
        ["provision.release_requested", "job.status_changed"],
    ),
    (
        "release confirmed ends a cancel",
        job(S.CANCELLING),
        released,
        S.CANCELLED,
        ["job.status_changed"],
    ),
    (
        "cancel while running stops the batch first",
        job(S.IN_PROGRESS),
        cancel,
        S.CANCELLING,
        ["batch.cancel_requested", "job.status_changed"],
    ),
    ("repeated cancel is harmless", job(S.CANCELLING), cancel, None, []),
    ("cancel of a terminal job changes nothing", job(S.COMPLETED), cancel, None, []),
    (
        "batch accepted",
        job(S.SUBMITTING),
        status_report(BatchStatus.VALIDATING),
        S.BATCH_CREATED,
        ["job.status_changed"],
    ),
    (
        "batch running",
        job(S.BATCH_CREATED),
        status_report(BatchStatus.IN_PROGRESS),
        S.IN_PROGRESS,
        ["job.status_changed"],
    ),
    (
        "late report never moves back",
        job(S.FINALIZING),
        status_report(BatchStatus.IN_PROGRESS),
        None,
        [],
    ),
    (
        "batch completed releases",
        job(S.FINALIZING),
        terminal(BatchStatus.COMPLETED),
        S.COMPLETED,
        ["provision.release_requested", "job.status_changed"],
    ),
    (
        "engine never healthy is submit_failed",
        job(S.SUBMITTING),
        terminal(BatchStatus.FAILED, "engine_not_ready"),
        S.SUBMIT_FAILED,
        ["provision.release_requested", "job.status_changed"],
    ),
    (
        "invalid input is failed",
        job(S.BATCH_CREATED),
        terminal(BatchStatus.FAILED, "invalid_input"),
        S.FAILED,
        ["provision.release_requested", "job.status_changed"],
    ),
    (
        "batch cancelled after cancel",
        job(S.CANCELLING),
        terminal(BatchStatus.CANCELLED),
        S.CANCELLED,
        ["provision.release_requested", "job.status_changed"],
    ),
    (
        "batch expired",
        job(S.IN_PROGRESS),
        terminal(BatchStatus.EXPIRED),
        S.EXPIRED,
        ["provision.release_requested", "job.status_changed"],
    ),
    (
        "cancel while finalizing still ends cancelled",
        job(S.CANCELLING, batch_handed_over=True),
        terminal(BatchStatus.COMPLETED),
        S.CANCELLED,
        ["provision.release_requested", "job.status_changed"],
    ),
    (
        "provisioning never answered",
        job(S.RESOURCE_PREPARING),
        DeadlinePassed("job_1"),
        S.RESOURCE_FAILED,
        ["provision.release_requested", "job.status_changed"],
    ),
    (
        "running batch past its window",
        job(S.IN_PROGRESS),
        DeadlinePassed("job_1"),
        S.EXPIRED,
        ["batch.cancel_requested", "provision.release_requested", "job.status_changed"],
    ),
    (
        "cancel never confirmed",
        job(S.CANCELLING),
        DeadlinePassed("job_1"),
        S.CANCELLED,
        ["provision.release_requested", "job.status_changed"],
    ),
    ("no deadline while queued", job(S.QUEUED), DeadlinePassed("job_1"), None, []),
    (
        "lost machine is replaced",
        job(S.IN_PROGRESS),
        lost("prov_1_1"),
        S.RESOURCE_PREPARING,
        ["provision.release_requested", "provision.requested", "job.status_changed"],
    ),
    (
        "lost too often fails the job",
        job(S.IN_PROGRESS, provision_id="prov_1_3"),
        lost("prov_1_3"),
        S.FAILED,
        ["batch.cancel_requested", "provision.release_requested", "job.status_changed"],
    ),
    (
        "lost while cancelling ends cancelled",
        job(S.CANCELLING),
        lost("prov_1_1"),
        S.CANCELLED,
        ["provision.release_requested", "job.status_changed"],
    ),
    (
        "loss of an old machine is ignored",
        job(S.IN_PROGRESS, provision_id="prov_1_2"),
        lost("prov_1_1"),
        None,
        [],
    ),
    (
        "event dead-lettered fails the job and frees the machine",
        job(S.RESOURCE_PREPARING),
        DeadLettered("job_1", "provision.running"),
        S.FAILED,
        ["provision.release_requested", "job.status_changed"],
    ),
    (
        "dead letter of a running batch stops it too",
        job(S.IN_PROGRESS),
        DeadLettered("job_1", "batch.status"),
        S.FAILED,
        ["batch.cancel_requested", "provision.release_requested", "job.status_changed"],
    ),
    (
        "dead letter after the end changes nothing",
        job(S.COMPLETED),
        DeadLettered("job_1", "batch.status"),
        None,
        [],
    ),
    ("terminal replay ignored", job(S.COMPLETED), terminal(BatchStatus.COMPLETED), None, []),
    (
        "no replacement for a lost machine stops the batch as well",
        job(S.RESOURCE_PREPARING, provision_id="prov_1_2", batch_handed_over=True),
        ProvisionFailed(provision_id="prov_1_2", job_id="job_1", code="NoCapacity", reason="-"),
        S.RESOURCE_FAILED,
        ["batch.cancel_requested", "provision.release_requested", "job.status_changed"],
    ),
    (
        "old run's report while its lost machine is replaced moves nothing",
        job(S.RESOURCE_PREPARING, provision_id="prov_1_2", batch_handed_over=True),
        status_report(BatchStatus.IN_PROGRESS),
        None,
        [],
    ),
]


@pytest.mark.parametrize(
    ("name", "before", "event", "after", "subjects"), CASES, ids=[c[0] for c in CASES]
)
def test_transition(
    name: str, before: Job, event: Event, after: JobStatus | None, subjects: list[str]
) -> None:
    decision = decide(before, event, NOW)
    if after is None and not subjects:
        assert decision is None or (decision.status is None and not decision.events)
        return
    assert decision is not None
    assert decision.status is after
    assert [e.subject for e in decision.events] == subjects


def test_provisioning_request_follows_the_template() -> None:
    decision = decide(
        job(S.QUEUED, provider="ssh"),
        JobQueued(job_id="job_1"),
        NOW,
        Limits(provisioning_seconds=600),
    )
    assert decision is not None
    request = decision.events[0]
    assert request.resource.accelerator_type == "H100" and request.resource.accelerator_count == 2  # type: ignore[attr-defined]
    assert request.resource.provider == "ssh"  # type: ignore[attr-defined]
    assert (request.deadline_at - NOW).total_seconds() == 600  # type: ignore[attr-defined]
    # Deterministic: a replay after a crash asks for the same provision, never a second one.
    assert (
        decision.fields["provision_id"]
        == decide(job(S.QUEUED), JobQueued(job_id="job_1"), NOW).fields["provision_id"]
    )  # type: ignore[union-attr]


def test_batch_request_carries_engine_and_window() -> None:
    decision = decide(job(S.RESOURCE_PREPARING), running, NOW)
    assert decision is not None
    batch = decision.events[0]
    assert batch.engine.port == 8123 and batch.engine.serving_name == "served"  # type: ignore[attr-defined]
    assert batch.target == ENDPOINT  # type: ignore[attr-defined]
    assert (batch.expires_at - NOW).total_seconds() == 3600  # type: ignore[attr-defined]


def test_batch_request_names_the_runtime_and_carries_the_client_block() -> None:
    on_runpod = ProvisionRunning(
        provision_id="prov_1_1", job_id="job_1", provider="runpod", endpoint=ENDPOINT
    )
    spec = {**SPEC, "engine": {**SPEC["engine"], "request_timeout_seconds": 45}}
    client = {"max_concurrency": 12, "retry_policy": {"max_retries": 1}}
    decision = decide(job(S.RESOURCE_PREPARING, template_spec=spec, client=client), on_runpod, NOW)
    assert decision is not None
    batch = decision.events[0]
    assert batch.runtime == "runpod"  # type: ignore[attr-defined]
    assert batch.client.max_concurrency == 12  # type: ignore[attr-defined]
    assert batch.client.retry_policy.max_retries == 1  # type: ignore[attr-defined]
    # The job set no timeout: the template's applies; a job's own timeout wins over it.
    assert batch.client.request_timeout_seconds == 45  # type: ignore[attr-defined]
    own = {**client, "request_timeout_seconds": 5}
    decision = decide(job(S.RESOURCE_PREPARING, template_spec=spec, client=own), on_runpod, NOW)
    assert decision.events[0].client.request_timeout_seconds == 5  # type: ignore[union-attr,attr-defined]


def test_status_change_event_names_both_states() -> None:
    decision = decide(job(S.IN_PROGRESS), terminal(BatchStatus.COMPLETED), NOW)
    assert decision is not None
    changed = decision.events[-1]
    assert (changed.old_status, changed.new_status) == ("in_progress", "completed")  # type: ignore[attr-defined]
    assert decision.fields["request_counts"] == {"total": 3, "completed": 2, "failed": 1}


def test_status_change_event_carries_the_version_the_job_is_written_at() -> None:
    """Integrations order a job's events by `job_version` (docs/events.md): it is the version
    `save_decision` writes, so it grows with every change of the job."""
    decision = decide(job(S.IN_PROGRESS, version=7), terminal(BatchStatus.COMPLETED), NOW)
    assert decision is not None
    changed = decision.events[-1]
    assert changed.job_version == 8  # type: ignore[attr-defined]


def test_every_waiting_state_gets_a_deadline_and_terminal_states_none() -> None:
    limits = Limits(
        provisioning_seconds=100, grace_seconds=10, cancel_seconds=30, expiry_grace_seconds=5
    )
    preparing = decide(job(S.QUEUED), JobQueued(job_id="job_1"), NOW, limits)
    submitting = decide(job(S.RESOURCE_PREPARING), running, NOW, limits)
    cancelling = decide(job(S.IN_PROGRESS), cancel, NOW, limits)
    done = decide(job(S.IN_PROGRESS), terminal(BatchStatus.COMPLETED), NOW, limits)
    assert preparing and submitting and cancelling and done
    assert (preparing.fields["deadline_at"] - NOW).total_seconds() == 110
    assert (submitting.fields["deadline_at"] - NOW).total_seconds() == 3600 + 5
    assert (cancelling.fields["deadline_at"] - NOW).total_seconds() == 30
    assert done.fields["deadline_at"] is None


def test_provisioning_slot_taken_on_entry_and_given_back_on_exit() -> None:
    entering = decide(job(S.QUEUED), JobQueued(job_id="job_1"), NOW)
    leaving = decide(job(S.RESOURCE_PREPARING), running, NOW)
    cancelled_early = decide(job(S.QUEUED), cancel, NOW)
    assert entering and entering.acquire_slot and not entering.release_slot
    assert leaving and leaving.release_slot and not leaving.acquire_slot
    assert cancelled_early and not cancelled_early.acquire_slot and not cancelled_early.release_slot


def test_replacement_machine_resumes_the_same_batch_in_its_original_window() -> None:
    expires = NOW.replace(hour=13)
    replaced = decide(job(S.IN_PROGRESS, expires_at=expires), lost("prov_1_1"), NOW)
    assert replaced is not None and replaced.fields["provision_id"] == "prov_1_2"
    assert not replaced.acquire_slot  # a replacement does not queue for a slot
    back = job(
        S.RESOURCE_PREPARING, provision_id="prov_1_2", batch_handed_over=True, expires_at=expires
    )
    running_again = ProvisionRunning(
        provision_id="prov_1_2", job_id="job_1", provider="ssh", endpoint=ENDPOINT
    )
    decision = decide(back, running_again, NOW)
    assert decision is not None
    batch = decision.events[0]
    assert batch.batch_id == "batch_1" and batch.provision_id == "prov_1_2"  # type: ignore[attr-defined]
    assert batch.expires_at == expires  # type: ignore[attr-defined]


def test_report_from_a_run_on_a_lost_machine_updates_counts_only() -> None:
    replacing = job(S.RESOURCE_PREPARING, provision_id="prov_1_2", batch_handed_over=True)
    decision = decide(replacing, status_report(BatchStatus.IN_PROGRESS), NOW)
    assert decision is not None and decision.status is None and not decision.events
    assert decision.fields["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    # Once the replacement runs the batch (submitting), its reports move the job on again.
    resumed = job(S.SUBMITTING, provision_id="prov_1_2")
    assert decide(resumed, status_report(BatchStatus.IN_PROGRESS), NOW).status is S.IN_PROGRESS  # type: ignore[union-attr]


def test_machine_lost_for_good_names_it_and_keeps_the_files_written_later() -> None:
    lost_for_good = ProvisionLost(
        provision_id="prov_1_1", job_id="job_1", reason="runpod machine pod-9 no longer exists"
    )
    decision = decide(job(S.IN_PROGRESS), lost_for_good, NOW, Limits(max_provision_attempts=1))
    assert decision is not None and decision.status is S.FAILED
    assert decision.fields["error_code"] == "machine_lost"
    message = decision.fields["error_message"]
    assert "prov_1_1" in message and "pod-9" in message and "1 machine was tried" in message
    # The agent gives the batch up afterwards: its partial files are attached, status kept.
    late = BatchTerminal(
        batch_id="batch_1",
        job_id="job_1",
        status=BatchStatus.CANCELLED,
        request_counts=counts,
        output_file_id="file-out",
        error_file_id="file-err",
    )
    attached = decide(job(S.FAILED), late, NOW)
    assert attached is not None and attached.status is None and not attached.events
    assert attached.fields["output_dataset"] == "file-out"
    assert attached.fields["error_dataset"] == "file-err"
    assert decide(job(S.FAILED, batch_id="batch_other"), late, NOW) is None


def test_a_completed_job_keeps_no_error_from_an_earlier_attempt() -> None:
    """issue 13 finding 9: a completed job showed a stale error_message of an earlier attempt."""
    decision = decide(job(S.IN_PROGRESS), terminal(BatchStatus.COMPLETED), NOW)
    assert decision is not None and decision.status is S.COMPLETED
    assert decision.fields["error_code"] is None
    assert decision.fields["error_message"] is None


def test_provisioning_request_carries_what_offer_ranking_needs() -> None:
    """Issue 16: accepted GPU types, declared throughput and start-up, the expected output."""
    spec = {
        **SPEC,
        "accelerator": {"type": "H100", "count": 1, "alternatives": ["A100"]},
        "placement": {
            "throughput": {"H100": 10300, "A100": 2400},
            "startup_seconds": 240,
            "output_tokens_per_request": 512,
        },
    }
    queued = job(S.QUEUED, template_spec=spec, template_id="tmpl_1", request_count=1000)
    decision = decide(queued, JobQueued(job_id="job_1"), NOW, Limits(provisioning_seconds=600))
    assert decision is not None
    resource = decision.events[0].resource  # type: ignore[attr-defined]
    assert resource.accelerator_alternatives == ["A100"]
    assert resource.template_key == "tmpl_1"
    assert resource.throughput == {"H100": 10300.0, "A100": 2400.0}
    assert resource.startup_seconds == 240.0
    assert resource.expected_output_tokens == 512_000
    # A template that declares nothing: the default per request, no figures, default start-up.
    plain = decide(job(S.QUEUED, request_count=10), JobQueued(job_id="job_1"), NOW, Limits())
    assert plain is not None
    resource = plain.events[0].resource  # type: ignore[attr-defined]
    assert resource.expected_output_tokens == 10 * 256
    assert (resource.throughput, resource.startup_seconds) == ({}, None)


def test_the_batchs_dispatch_times_go_on_the_job_for_its_bill():
    sent = datetime(2026, 11, 28, 11, 58, tzinfo=UTC)
    answered = datetime(2026, 11, 28, 11, 59, tzinfo=UTC)
    ended = BatchTerminal(
        batch_id="batch_1",
        job_id="job_1",
        status=BatchStatus.COMPLETED,
        request_counts=counts,
        dispatch_started_at=sent,
        dispatch_ended_at=answered,
    )
    decision = decide(job(S.IN_PROGRESS), ended, NOW)
    assert decision is not None and decision.status is S.COMPLETED
    assert (decision.fields["dispatch_started_at"], decision.fields["dispatch_ended_at"]) == (
        sent,
        answered,
    )
    # A batch that dispatched nothing (failed before its engine was up) says nothing.
    decision = decide(job(S.IN_PROGRESS), terminal(BatchStatus.FAILED, "engine_not_ready"), NOW)
    assert decision is not None and "dispatch_started_at" not in decision.fields
