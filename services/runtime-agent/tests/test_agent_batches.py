"""The batch state machine, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from neobatch.common.contracts import BatchStatus as S
from neobatch.common.contracts import EngineSpec, SshEndpoint
from neobatch.runtime_agent.batch.batches import (
    Batch,
    Step,
    batch_doc_from_event,
    batch_from_doc,
    can_request_cancel,
    can_transition,
    is_terminal,
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
    assert is_terminal(status) is (status in TERMINAL)
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
