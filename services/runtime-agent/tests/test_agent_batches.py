"""The batch state machine, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from neobatch.common.batch_input import validate_lines
from neobatch.common.contracts import BatchStatus as S
from neobatch.common.contracts import (
    BatchStatusReported,
    BatchTerminal,
    EngineSpec,
    RequestCounts,
    SshEndpoint,
    Usage,
)
from neobatch.runtime_agent.batch.batches import (
    EXPIRED_UNFINISHED,
    Batch,
    Failure,
    ResultFiles,
    Step,
    batch_doc_from_event,
    batch_from_doc,
    can_request_cancel,
    can_transition,
    decide_end,
    decide_move,
    input_failure,
    machine_left_behind,
    path_to,
    plan_outcome,
    plan_start,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TERMINAL = [S.COMPLETED, S.FAILED, S.EXPIRED, S.CANCELLED]


def make_batch(status: S, *, cancel: bool = False, expires_in: float | None = None) -> Batch:
    return Batch(
        id="batch_1",
        job_id="job_1",
        provision_id="prov_1",
        input_file_id="file_1",
        endpoint="/v1/chat/completions",
        target=SshEndpoint(host="127.0.0.1", port=22, username="root"),
        engine=EngineSpec(serving_name="m", model_uri="m"),
        status=status,
        created_at=NOW,
        cancel_requested_at=NOW if cancel else None,
        expires_at=None if expires_in is None else NOW + timedelta(seconds=expires_in),
    )


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (S.VALIDATING, S.IN_PROGRESS, True),
        (S.VALIDATING, S.FAILED, True),
        (S.VALIDATING, S.CANCELLED, True),
        (S.VALIDATING, S.EXPIRED, True),
        (S.VALIDATING, S.COMPLETED, False),
        (S.VALIDATING, S.FINALIZING, False),
        (S.IN_PROGRESS, S.FINALIZING, True),
        (S.IN_PROGRESS, S.CANCELLING, True),
        (S.IN_PROGRESS, S.EXPIRED, True),
        (S.IN_PROGRESS, S.FAILED, True),
        (S.IN_PROGRESS, S.COMPLETED, False),
        (S.IN_PROGRESS, S.CANCELLED, False),
        (S.FINALIZING, S.COMPLETED, True),
        (S.FINALIZING, S.FAILED, True),
        (S.FINALIZING, S.CANCELLING, False),
        (S.CANCELLING, S.CANCELLED, True),
        (S.CANCELLING, S.COMPLETED, False),
        *[(t, n, False) for t in TERMINAL for n in S],
    ],
)
def test_transitions(old: S, new: S, allowed: bool) -> None:
    assert can_transition(old, new) is allowed


@pytest.mark.parametrize("status", list(S))
def test_terminal_and_cancel(status: S) -> None:
    assert status.is_terminal is (status in TERMINAL)
    assert can_request_cancel(status) is (status not in TERMINAL)


@pytest.mark.parametrize(
    ("status", "cancel", "expires_in", "step"),
    [
        (S.VALIDATING, False, None, Step.VALIDATE),
        (S.VALIDATING, False, 60, Step.VALIDATE),
        (S.VALIDATING, True, None, Step.CANCEL_UNSTARTED),
        (S.VALIDATING, True, -1, Step.CANCEL_UNSTARTED),
        (S.VALIDATING, False, -1, Step.EXPIRE_UNSTARTED),
        (S.VALIDATING, False, 0, Step.EXPIRE_UNSTARTED),
        (S.IN_PROGRESS, False, None, Step.RUN),
        (S.IN_PROGRESS, True, -1, Step.RUN),
        (S.FINALIZING, False, None, Step.WIND_DOWN),
        (S.CANCELLING, True, None, Step.WIND_DOWN),
        *[(t, False, None, Step.NOTHING) for t in TERMINAL],
    ],
)
def test_plan_start(status: S, cancel: bool, expires_in: float | None, step: Step) -> None:
    assert plan_start(make_batch(status, cancel=cancel, expires_in=expires_in), NOW) is step


@pytest.mark.parametrize(
    ("status", "all_finished", "cancel", "expired", "outcome"),
    [
        (S.IN_PROGRESS, True, False, False, S.COMPLETED),
        (S.IN_PROGRESS, True, True, True, S.COMPLETED),
        (S.IN_PROGRESS, False, False, True, S.EXPIRED),
        (S.IN_PROGRESS, False, True, True, S.EXPIRED),
        (S.IN_PROGRESS, False, True, False, S.CANCELLED),
        (S.FINALIZING, False, True, True, S.COMPLETED),
        (S.CANCELLING, True, False, False, S.CANCELLED),
    ],
)
def test_plan_outcome(
    status: S, all_finished: bool, cancel: bool, expired: bool, outcome: S
) -> None:
    got = plan_outcome(
        status=status, all_finished=all_finished, cancel_requested=cancel, expired=expired
    )
    assert got is outcome


def test_plan_outcome_budget_stop_is_failed_unless_all_finished() -> None:
    common = {"status": S.IN_PROGRESS, "cancel_requested": True, "expired": False}
    assert plan_outcome(all_finished=False, budget_stop=True, **common) is S.FAILED
    assert plan_outcome(all_finished=True, budget_stop=True, **common) is S.COMPLETED


@pytest.mark.parametrize(
    ("current", "outcome", "path"),
    [
        (S.IN_PROGRESS, S.COMPLETED, [S.FINALIZING, S.COMPLETED]),
        (S.FINALIZING, S.COMPLETED, [S.COMPLETED]),
        (S.IN_PROGRESS, S.CANCELLED, [S.CANCELLING, S.CANCELLED]),
        (S.CANCELLING, S.CANCELLED, [S.CANCELLED]),
        (S.VALIDATING, S.CANCELLED, [S.CANCELLED]),
        (S.IN_PROGRESS, S.EXPIRED, [S.EXPIRED]),
        (S.IN_PROGRESS, S.FAILED, [S.FAILED]),
        (S.VALIDATING, S.FAILED, [S.FAILED]),
    ],
)
def test_path_to(current: S, outcome: S, path: list[S]) -> None:
    assert path_to(current, outcome) == path


@pytest.mark.parametrize(
    ("current", "outcome"), [(S.VALIDATING, S.COMPLETED), (S.COMPLETED, S.FAILED)]
)
def test_path_to_refuses_impossible(current: S, outcome: S) -> None:
    with pytest.raises(ValueError):
        path_to(current, outcome)


def test_document_round_trip() -> None:
    from neobatch.common.contracts import BatchRequested

    event = BatchRequested(
        batch_id="batch_x",
        job_id="job_x",
        provision_id="prov_x",
        input_file_id="file_x",
        endpoint="/v1/chat/completions",
        target=SshEndpoint(host="h", port=2222, username="u", host_public_key="ssh-ed25519 AAAA"),
        engine=EngineSpec(
            serving_name="m", model_uri="hf://m", engine_args={"max_model_len": 4096}
        ),
        expires_at=NOW + timedelta(hours=24),
    )
    doc = batch_doc_from_event(event, NOW)
    assert doc["_id"] == "batch_x" and doc["status"] == "validating"
    assert doc["lease_owner"] is None and doc["lease_until"] is None
    batch = batch_from_doc(doc)
    assert batch.id == "batch_x" and batch.target == event.target and batch.engine == event.engine
    assert batch.host_public_key == "ssh-ed25519 AAAA"
    assert batch.status is S.VALIDATING and batch.expires_at == event.expires_at


COUNTS = RequestCounts(total=10, completed=7, failed=3)
FILES = ResultFiles("file_1_output", "file_1_error", Usage(5, 7, 12))


def test_decide_move_reports_the_status_with_its_counts() -> None:
    move = decide_move(make_batch(S.VALIDATING), S.IN_PROGRESS, COUNTS)
    assert move.status is S.IN_PROGRESS and move.fields == {"request_counts": COUNTS}
    assert move.event == BatchStatusReported(
        batch_id="batch_1",
        job_id="job_1",
        status=S.IN_PROGRESS,
        request_counts=COUNTS,
        event_id=move.event.event_id,
        occurred_at=move.event.occurred_at,
    )
    with pytest.raises(ValueError, match="decide_end"):
        decide_move(make_batch(S.IN_PROGRESS), S.FAILED, COUNTS)


@pytest.mark.parametrize(
    ("outcome", "failure", "error_fields"),
    [
        (S.COMPLETED, None, {}),
        (S.CANCELLED, None, {}),
        (S.EXPIRED, EXPIRED_UNFINISHED, {"error_code": "batch_expired"}),
        (S.FAILED, Failure("ssh_unreachable", "down"), {"error_code": "ssh_unreachable"}),
        (
            S.FAILED,
            Failure("invalid_input_file", "bad", [{"object": "error", "line": 2}]),
            {"error_code": "invalid_input_file", "errors": [{"object": "error", "line": 2}]},
        ),
    ],
)
def test_decide_end_records_files_counts_and_failure_with_its_event(
    outcome: S, failure: Failure | None, error_fields: dict
) -> None:
    sent, answered = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    end = decide_end(
        make_batch(S.IN_PROGRESS),
        outcome,
        COUNTS,
        files=FILES,
        failure=failure,
        dispatch_seconds=2,
        dispatch_started_at=sent,
        dispatch_ended_at=answered,
    )
    assert end.status is outcome
    expected = {
        "request_counts": COUNTS,
        "output_file_id": "file_1_output",
        "error_file_id": "file_1_error",
        "usage": Usage(5, 7, 12),
        "dispatch_seconds": 2,
        "dispatch_started_at": sent,
        "dispatch_ended_at": answered,
    }
    if failure is not None:
        expected["error_message"] = failure.message
    assert end.fields == {**expected, **error_fields}
    event = end.event
    assert isinstance(event, BatchTerminal)
    assert (event.batch_id, event.job_id, event.status) == ("batch_1", "job_1", outcome)
    assert (event.output_file_id, event.error_file_id) == ("file_1_output", "file_1_error")
    assert (event.request_counts, event.usage) == (COUNTS, Usage(5, 7, 12))
    assert event.error_code == error_fields.get("error_code", "")
    assert event.error_message == (failure.message if failure else "")
    assert (event.dispatch_started_at, event.dispatch_ended_at) == (sent, answered)


def test_decide_end_without_files_and_only_for_terminal_statuses() -> None:
    end = decide_end(make_batch(S.VALIDATING), S.CANCELLED, RequestCounts())
    assert (end.fields["output_file_id"], end.fields["error_file_id"]) == (None, None)
    assert end.fields["usage"] == Usage() and "error_code" not in end.fields
    with pytest.raises(ValueError, match="does not end"):
        decide_end(make_batch(S.IN_PROGRESS), S.FINALIZING, RequestCounts())


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        (
            [b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}'],
            None,
        ),
        ([], "empty_file"),
        ([b"not json"], "invalid_input_file"),
    ],
)
def test_input_failure(lines: list[bytes], code: str | None) -> None:
    _, report = validate_lines(lines, "/v1/chat/completions")
    failure = input_failure(report)
    if code is None:
        assert failure is None
        return
    assert failure is not None and failure.code == code and failure.message == report.summary()
    assert failure.errors and all(e["object"] == "error" for e in failure.errors)
    assert failure.errors[0]["message"] == report.errors[0].message


@pytest.mark.parametrize(
    "status,target,expected",
    [
        (S.IN_PROGRESS, None, False),  # a new owner on the same machine reuses the engine
        (S.FINALIZING, None, False),
        (S.IN_PROGRESS, ("10.0.0.9", 22, "root"), True),  # moved to a replacement machine
        (S.IN_PROGRESS, ("127.0.0.1", 22, "u1"), True),  # another pool user: another machine
        *[(status, None, True) for status in TERMINAL],  # ended: nobody comes back
    ],
)
def test_machine_left_behind(status, target, expected):
    mine = make_batch(S.IN_PROGRESS)
    current = make_batch(status)
    if target is not None:
        host, port, user = target
        current.target = SshEndpoint(host=host, port=port, username=user)
    assert machine_left_behind(mine, current) is expected
    assert machine_left_behind(mine, None) is True  # the batch is gone
