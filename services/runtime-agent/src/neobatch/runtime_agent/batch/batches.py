"""The batch state machine (OpenAI's eight states) and the batch document. Pure: no I/O.

    validating ──► in_progress ──► finalizing ──► completed
        │              │  └──────► cancelling ──► cancelled
        │              └─────────► failed | expired
        └──► failed | expired | cancelled           (nothing was started yet)

The runner asks `plan_start` what to do with a batch it has just claimed (a fresh one, or one
another agent left half-done) and `plan_outcome` how to end it once dispatch stops. Every
status change is a `Transition` decided here (`decide_move`, `decide_end`) and written by one
store call, `BatchStore.save_transition`: the compare-and-set and its event together.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import msgspec

from neobatch.common.batch_input import ValidationReport
from neobatch.common.contracts import (
    BatchRequested,
    BatchStatus,
    BatchStatusReported,
    BatchTerminal,
    ClientSpec,
    EngineSpec,
    RequestCounts,
    SshEndpoint,
    Usage,
)

S = BatchStatus

TRANSITIONS: dict[BatchStatus, frozenset[BatchStatus]] = {
    S.VALIDATING: frozenset({S.IN_PROGRESS, S.FAILED, S.EXPIRED, S.CANCELLED}),
    S.IN_PROGRESS: frozenset({S.FINALIZING, S.CANCELLING, S.FAILED, S.EXPIRED}),
    # A cancel that arrives while finalizing is too late (OpenAI answers 409): no edge to it.
    S.FINALIZING: frozenset({S.COMPLETED, S.FAILED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED}),
}

# The `<status>_at` timestamp each transition stamps on the document (OpenAI batch fields).
TIMESTAMP_FIELD: dict[BatchStatus, str] = {s: f"{s.value}_at" for s in BatchStatus}


class Batch(msgspec.Struct, kw_only=True):
    """The `batches` document, as the runner sees it."""

    id: str = msgspec.field(name="_id")
    job_id: str
    provision_id: str
    input_file_id: str
    endpoint: str
    owner: str = ""
    target: SshEndpoint
    engine: EngineSpec
    # How the engine is launched on the machine: "ssh" (template command), "runpod"
    # (`vllm serve`), "lambdaCloud" (`docker run`); the provider that leased it.
    runtime: str = "ssh"
    # The job's AIBrix `client` block: concurrency, per-request timeout, retries.
    client: ClientSpec = ClientSpec()
    # Machines the job asked for: above 1 the batch is spread (`machines`, `chunks`).
    replicas: int = 1
    status: BatchStatus
    created_at: datetime
    expires_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    # The host key we trust: from the event, else pinned on first use (DESIGN "Runtime targets").
    host_public_key: str | None = None
    request_counts: RequestCounts = RequestCounts()
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = []
    error_code: str = ""
    error_message: str = ""
    # Runs that ended in an unexpected error; past a bound the batch fails (no endless retry).
    crash_count: int = 0
    # Time the run that ended the batch spent dispatching (sending and checkpointing; engine
    # start-up excluded): the dispatch benchmark's rate is requests / this.
    dispatch_seconds: float = 0.0
    lease_owner: str | None = None
    lease_until: datetime | None = None
    version: int = 0


def batch_from_doc(doc: dict[str, Any]) -> Batch:
    return msgspec.convert(doc, Batch)


def batch_doc_from_event(event: BatchRequested, now: datetime) -> dict[str, Any]:
    """The document `on_batch_requested` inserts: everything from the event, no lease yet."""
    return {
        "_id": event.batch_id,
        "job_id": event.job_id,
        "provision_id": event.provision_id,
        "input_file_id": event.input_file_id,
        "endpoint": event.endpoint,
        "owner": event.owner,
        "target": msgspec.to_builtins(event.target),
        "engine": msgspec.to_builtins(event.engine),
        "runtime": event.runtime,
        "client": msgspec.to_builtins(event.client),
        "replicas": max(1, event.replicas),
        "status": BatchStatus.VALIDATING.value,
        "created_at": now,
        "expires_at": event.expires_at,
        "cancel_requested_at": None,
        "host_public_key": event.target.host_public_key,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "output_file_id": None,
        "error_file_id": None,
        "errors": [],
        "error_code": "",
        "error_message": "",
        "requested_event_id": event.event_id,
        "crash_count": 0,
        "lease_owner": None,
        "lease_until": None,
        "version": 0,
    }


def can_transition(old: BatchStatus, new: BatchStatus) -> bool:
    return new in TRANSITIONS.get(old, frozenset())


def can_request_cancel(status: BatchStatus) -> bool:
    return not status.is_terminal


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and now >= expires_at


class Step(StrEnum):
    """What the runner does first with a batch it has claimed."""

    NOTHING = "nothing"  # already terminal: a stale claim
    CANCEL_UNSTARTED = "cancel_unstarted"  # cancelled before any machine work
    EXPIRE_UNSTARTED = "expire_unstarted"  # window passed before any machine work
    VALIDATE = "validate"  # read the input, then run
    RUN = "run"  # (re)start the engine and dispatch what is not finished yet
    WIND_DOWN = "wind_down"  # a previous owner was stopping: write files, stop engine, end


def plan_start(batch: Batch, now: datetime) -> Step:
    status = batch.status
    if status.is_terminal:
        return Step.NOTHING
    if status is S.VALIDATING:
        # Nothing runs on the machine before in_progress, so there is nothing to stop.
        if batch.cancel_requested_at is not None:
            return Step.CANCEL_UNSTARTED
        if is_expired(batch.expires_at, now):
            return Step.EXPIRE_UNSTARTED
        return Step.VALIDATE
    if status is S.IN_PROGRESS:
        # A cancel or expiry noticed here is handled by the run itself: it dispatches nothing
        # and goes straight to the outcome, which also stops an engine a dead agent left.
        return Step.RUN
    return Step.WIND_DOWN  # finalizing or cancelling


def plan_outcome(
    *,
    status: BatchStatus,
    all_finished: bool,
    cancel_requested: bool,
    expired: bool,
    budget_stop: bool = False,
) -> BatchStatus:
    """The terminal status of a batch whose dispatch has stopped.

    Every request finished wins over a late cancel or expiry (the work is done and paid for);
    then expiry, then cancel, as AIBrix orders its conditions. A cancel asked because the job
    reached its cost cap (`budget_stop`) ends the batch `failed` (`BUDGET_EXCEEDED`).
    """
    if status is S.FINALIZING:
        return S.COMPLETED
    if status is S.CANCELLING:
        return S.CANCELLED
    if all_finished:
        return S.COMPLETED
    if expired:
        return S.EXPIRED
    if cancel_requested:
        return S.FAILED if budget_stop else S.CANCELLED
    return S.COMPLETED


def path_to(current: BatchStatus, outcome: BatchStatus) -> list[BatchStatus]:
    """The statuses to pass through from `current` to the terminal `outcome`, in order.

    completed goes through finalizing and cancelled through cancelling, so watchers see
    OpenAI's intermediate states; expired and failed are reached directly.
    """
    via = {S.COMPLETED: S.FINALIZING, S.CANCELLED: S.CANCELLING}.get(outcome)
    path: list[BatchStatus] = []
    if via is not None and current is not via and can_transition(current, via):
        path.append(via)
    path.append(outcome)
    state = current
    for step in path:
        if not can_transition(state, step):
            raise ValueError(f"batch cannot go from {state} to {step}")
        state = step
    return path


def machine_left_behind(mine: Batch, current: Batch | None) -> bool:
    """After our lease was lost: is the engine we ran (on `mine.target`) nobody's any more?

    Yes when the batch has ended, is gone, or moved to another machine (a replacement): then
    no later run will stop it or remove its work directory, so we do. No while it is live on
    the same machine: its new owner reuses the running engine and cleans up when it ends.
    """
    if current is None or current.status.is_terminal:
        return True
    here, there = mine.target, current.target
    return (here.host, here.port, here.username) != (there.host, there.port, there.username)


# --- transitions ---------------------------------------------------------------------------------

EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


class Failure(msgspec.Struct, frozen=True):
    """Why a batch ended badly: its `error_code`, `error_message` and, for input, line `errors`."""

    code: str
    message: str
    errors: list[dict[str, Any]] | None = None


EXPIRED_BEFORE_START = Failure(
    "batch_expired", "the completion window passed before the batch started"
)
EXPIRED_UNFINISHED = Failure(
    "batch_expired", "the completion window passed before every request finished"
)


# The planner's stop at a job's cost cap (`batch.cancel_requested` reason `budget_exceeded`).
BUDGET_REASON = "budget_exceeded"
BUDGET_EXCEEDED = Failure(
    BUDGET_REASON, "the job reached its max_cost_usd before every request finished"
)
BUDGET_LINE_MESSAGE = "This request was not sent: the job reached its max_cost_usd."


def engine_exited_failure(reason: str, exits: int) -> Failure:
    """The engine kept exiting mid-batch: `engine_exited`, led by its own last error line (the
    batch's error, and each unsent request's in the error file)."""
    what = f"engine process exited mid-batch {exits} time{'s' if exits != 1 else ''}"
    return Failure("engine_exited", f"{reason} ({what})" if reason else what)


def input_failure(report: ValidationReport) -> Failure | None:
    """Why the input file fails validation, with OpenAI's `errors` list; None when it passes."""
    if report.ok:
        return None
    errors = [{"object": "error", **msgspec.structs.asdict(e)} for e in report.errors]
    code = "empty_file" if report.invalid_lines == 0 else "invalid_input_file"
    return Failure(code, report.summary(), errors)


class ResultFiles(NamedTuple):
    """The files a batch ends with: None for a file without lines (OpenAI leaves it unset)."""

    output_file_id: str | None
    error_file_id: str | None
    usage: Usage


NO_FILES = ResultFiles(None, None, Usage())


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One status change as the store writes it: the new status, the fields set with it, and
    the event that goes to the outbox in the same transaction."""

    status: BatchStatus
    fields: dict[str, Any]
    event: BatchStatusReported | BatchTerminal


def status_reported(
    batch: Batch, status: BatchStatus, counts: RequestCounts
) -> BatchStatusReported:
    return BatchStatusReported(
        batch_id=batch.id, job_id=batch.job_id, status=status, request_counts=counts
    )


def decide_move(batch: Batch, status: BatchStatus, counts: RequestCounts) -> Transition:
    """A move to a non-terminal status (in_progress, finalizing, cancelling)."""
    if status.is_terminal:
        raise ValueError(f"{status} ends the batch: use decide_end")
    return Transition(
        status=status,
        fields={"request_counts": counts},
        event=status_reported(batch, status, counts),
    )


def decide_end(
    batch: Batch,
    outcome: BatchStatus,
    counts: RequestCounts,
    *,
    files: ResultFiles = NO_FILES,
    failure: Failure | None = None,
    dispatch_seconds: float = 0.0,
    dispatch_started_at: datetime | None = None,
    dispatch_ended_at: datetime | None = None,
) -> Transition:
    """The terminal record of a batch and its `batch.terminal` event.

    The files are written (and the engine stopped) before this is decided: the record names
    the files, and the usage is summed while the output file is written.
    """
    if not outcome.is_terminal:
        raise ValueError(f"{outcome} does not end a batch")
    fields: dict[str, Any] = {
        "request_counts": counts,
        "output_file_id": files.output_file_id,
        "error_file_id": files.error_file_id,
        "usage": files.usage,
        "dispatch_seconds": dispatch_seconds,
        "dispatch_started_at": dispatch_started_at,
        "dispatch_ended_at": dispatch_ended_at,
    }
    code = message = ""
    if failure is not None:
        code, message = failure.code, failure.message
        fields.update(error_code=code, error_message=message)
        if failure.errors is not None:
            fields["errors"] = failure.errors
    event = BatchTerminal(
        batch_id=batch.id,
        job_id=batch.job_id,
        status=outcome,
        request_counts=counts,
        dispatch_seconds=dispatch_seconds,
        output_file_id=files.output_file_id,
        error_file_id=files.error_file_id,
        error_code=code,
        error_message=message,
        usage=files.usage,
        dispatch_started_at=dispatch_started_at,
        dispatch_ended_at=dispatch_ended_at,
    )
    return Transition(status=outcome, fields=fields, event=event)
