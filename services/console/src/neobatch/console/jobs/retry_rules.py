"""Rules for re-running a job's failed and unfinished lines (issue 18). Pure.

A retry is a new job whose input holds exactly the original input lines, byte for byte and in
their order, whose `custom_id` is in the original's error file or has no result at all (the
lines a cancelled, expired or failed job never finished). Only a job that ended may be retried;
the new job keeps the original's template, provider, replicas, window, metadata, client options
and cost cap unless the request overrides the template, replicas or cap.

At most one retry of a job runs at a time: asking again while one has not ended answers that one
(a repeated POST makes no second job), unless the request differs (409 `retry_in_progress`).
With an `Idempotency-Key` the new job's id is derived from (project, key), so a replay finds the
job it made instead of making another, whatever happened in between.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import msgspec

from neobatch.common.batch_input import is_blank, strip_bom
from neobatch.common.contracts import ClientSpec, JobStatus
from neobatch.common.errors import Conflict
from neobatch.console.jobs.schemas import CreateJob, ResourceRequestIn, RetryJob

# How many retries one job may have (its view lists them all as `retried_by`).
MAX_RETRIES_PER_JOB = 20
# Codes of a job that never ran because its input failed validation: a retry would fail alike.
_INPUT_FAILURES = frozenset({"invalid_input_file", "empty_file"})


class RetryExists(Exception):
    """A retry of the job that answers this request already exists (it is not an error)."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(job["_id"])
        self.job = job


class NothingToRetry(Conflict):
    code = "nothing_to_retry"


def check_retryable(job: dict[str, Any]) -> None:
    """409 `job_not_terminal` while the job runs; 409 `nothing_to_retry` when it never ran
    because its input file was refused (the same file would be refused again)."""
    if not JobStatus(job["status"]).is_terminal:
        raise Conflict(
            f"job {job['_id']!r} is {job['status']}; only a job that ended can be retried "
            "(cancel it first to retry now)",
            code="job_not_terminal",
        )
    if job.get("error_code") in _INPUT_FAILURES and not job.get("output_dataset"):
        raise NothingToRetry(
            f"job {job['_id']!r} never ran: its input file failed validation "
            f"({job['error_code']}); fix the file and submit it again"
        )


def nothing_to_retry(job_id: str) -> NothingToRetry:
    return NothingToRetry(f"job {job_id!r} has no failed or unfinished lines to retry")


def template_ref(text: str) -> tuple[str, str]:
    """`NAME` or `NAME@VERSION` → (name, version); "" for a version means the latest active."""
    name, _, version = text.partition("@")
    return name.strip(), version.strip()


def overrides_of(request: RetryJob | None) -> dict[str, Any]:
    """The request's overrides as stored on the retry (only what it set)."""
    asked = msgspec.to_builtins(request) if request is not None else {}
    return {field: value for field, value in asked.items() if value is not None}


def retry_request(job: dict[str, Any], overrides: RetryJob | None, file_id: str) -> CreateJob:
    """The job request a retry makes: the original's choices on the new input file, with the
    request's overrides. Checked by job creation exactly like any other request."""
    asked = overrides or RetryJob()
    resource = job.get("resource_request") or {}
    name, version, model_id = (
        job.get("model_template_name") or "",
        job.get("model_template_version") or "",
        job.get("model_id") or "",
    )
    if asked.model_template is not None:
        # Another template is resolved as a create resolves a name: on any model it names.
        (name, version), model_id = template_ref(asked.model_template), ""
    client = job.get("client")
    return CreateJob(
        input_dataset=file_id,
        endpoint=job["endpoint"],
        completion_window=job.get("completion_window") or "24h",
        name=job.get("name") or "",
        model_id=model_id,
        model_template_name=name,
        model_template_version=version,
        resource_request=ResourceRequestIn(
            replicas=asked.replicas or int(resource.get("replicas") or 0),
            provider_config=resource.get("provider_config"),
        ),
        client=msgspec.convert(client, ClientSpec) if client is not None else None,
        metadata=dict(job.get("metadata") or {}),
        provider=job.get("provider"),
        max_cost_usd=(
            asked.max_cost_usd if asked.max_cost_usd is not None else job.get("max_cost_usd")
        ),
    )


class RetryLink(NamedTuple):
    """What makes a created job a retry: the original, the overrides asked, the key."""

    original_id: str
    overrides: dict[str, Any]
    idempotency_key: str | None
    job_id: str | None  # from the key; None: a random one

    def fields(self) -> dict[str, Any]:
        """What a retry's document carries besides a created job's fields."""
        return {
            "retry_of": self.original_id,
            "retry_overrides": self.overrides,
            "idempotency_key": self.idempotency_key,
        }

    def check(self, siblings: list[dict[str, Any]]) -> None:
        check_siblings(siblings, self.overrides)


def retry_job_id(project: str, idempotency_key: str | None) -> str | None:
    """The id a retry made with this key gets (None: no key, a random id)."""
    if not idempotency_key:
        return None
    digest = hashlib.sha256(f"{project}\0{idempotency_key}".encode()).hexdigest()
    return f"job_{digest[:32]}"


def check_replay(existing: dict[str, Any], original_id: str) -> dict[str, Any]:
    """The job an Idempotency-Key already made: it, when it is a retry of the same job."""
    if existing.get("retry_of") != original_id:
        raise Conflict(
            "Idempotency-Key was already used for another request in this project",
            code="idempotency_key_reused",
        )
    return existing


def check_siblings(siblings: Sequence[dict[str, Any]], overrides: dict[str, Any]) -> None:
    """Before a retry is stored, given the job's existing retries (oldest first): raise
    `RetryExists` when one has not ended and was asked the same way (the answer is that one),
    409 `retry_in_progress` when it was asked otherwise, 409 `too_many_retries` at the bound."""
    for sibling in siblings:
        if JobStatus(sibling["status"]).is_terminal:
            continue
        if (sibling.get("retry_overrides") or {}) == overrides:
            raise RetryExists(sibling)
        raise Conflict(
            f"retry {sibling['_id']!r} of this job has not ended yet; wait for it or cancel it "
            "to retry with other choices",
            code="retry_in_progress",
        )
    if len(siblings) >= MAX_RETRIES_PER_JOB:
        raise Conflict(
            f"this job was retried {len(siblings)} times already (the most a job may be); "
            "retry its latest retry instead",
            code="too_many_retries",
        )


class _CustomId(msgspec.Struct):
    custom_id: str


_CUSTOM_ID = msgspec.json.Decoder(_CustomId)


def custom_id_of(raw: bytes, line_index: int = 1) -> str | None:
    """A JSONL line's `custom_id` (input or result line; the rest is skipped), or None."""
    try:
        return _CUSTOM_ID.decode(strip_bom(raw, line_index)).custom_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def succeeded_ids(output_ids: Iterable[str], error_ids: Iterable[str]) -> set[str]:
    """The custom ids with a result in the output file and none in the error file."""
    return set(output_ids).difference(error_ids)


class LineSelector:
    """Feed the original input's lines in order; `feed` answers the bytes the retry's input
    holds for a line (the line as it was, with its newline) or None when it is left out: a
    blank line, or a line whose request succeeded. A line whose `custom_id` cannot be read
    has no result: it is kept, and the new job's validation names it."""

    def __init__(self, succeeded: set[str]) -> None:
        self._succeeded = succeeded
        self.selected = 0

    def feed(self, line_index: int, raw: bytes) -> bytes | None:
        if is_blank(raw):
            return None
        if custom_id_of(raw, line_index) in self._succeeded:
            return None
        self.selected += 1
        return raw + b"\n"
