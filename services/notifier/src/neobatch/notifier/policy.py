"""What the notifier decides, pure: which webhooks an event makes, their bodies, when to try a
delivery again, and when an endpoint has failed for good. No I/O; time and randomness are
passed in.

Bodies are OpenAI's for the batch events (`{"id": "evt_...", "object": "event", "created_at",
"type": "batch.completed", "data": {"id": "<batch id>"}}`, which `openai`'s
`client.webhooks.unwrap()` parses) and the same envelope for `job.status_changed`, whose `data`
adds the job, the statuses and the reason.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec

from neobatch.common.contracts import JobStatus, JobStatusChanged
from neobatch.common.webhooks import JOB_STATUS_CHANGED

# Job status -> the OpenAI batch event it ends in (the OpenAI view shows the last two as failed).
BATCH_EVENT_OF = {
    JobStatus.COMPLETED: "batch.completed",
    JobStatus.FAILED: "batch.failed",
    JobStatus.RESOURCE_FAILED: "batch.failed",
    JobStatus.SUBMIT_FAILED: "batch.failed",
    JobStatus.EXPIRED: "batch.expired",
    JobStatus.CANCELLED: "batch.cancelled",
}
# Attempts a delivery keeps in its log (the newest); `attempt_count` counts them all.
KEPT_ATTEMPTS = 50


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff with jitter: attempt n waits base * 2^(n-1), capped, times a random
    factor in [0.5, 1); a `Retry-After` longer than that wins. Retries go on until `window`
    seconds after the first attempt, the last one at the window's end."""

    base_seconds: float = 5.0
    max_delay_seconds: float = 3600.0
    window_seconds: float = 86400.0
    # Consecutive deliveries that ended failed before the endpoint is disabled.
    disable_after_failures: int = 5


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    """One webhook an event makes: its type, the body's event id and the body."""

    event_type: str
    body_id: str
    body: str


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What an attempt's answer means for its delivery."""

    # delivered | retry | failed
    status: str
    error: str | None = None
    next_attempt_at: datetime | None = None
    # Non-empty: disable the endpoint with this reason now (410, forbidden address).
    disable_reason: str = ""


def webhooks_for(event: JobStatusChanged, batch_id: str | None, wanted: set[str]) -> list[Webhook]:
    """The webhooks `event` makes among the types `wanted` (the union of the project's
    endpoints' choices)."""
    made = []
    created_at = int(event.occurred_at.timestamp())
    batch_type = BATCH_EVENT_OF.get(JobStatus(event.new_status))
    if batch_type and batch_type in wanted and batch_id:
        body_id = (
            "evt_" + hashlib.sha256(f"{event.event_id}:{batch_type}".encode()).hexdigest()[:24]
        )
        made.append(
            Webhook(
                event_type=batch_type,
                body_id=body_id,
                body=_envelope(body_id, created_at, batch_type, {"id": batch_id}),
            )
        )
    if JOB_STATUS_CHANGED in wanted:
        data = {
            "id": event.job_id,
            "batch_id": batch_id,
            "old_status": event.old_status,
            "new_status": event.new_status,
            "reason": event.reason,
        }
        made.append(
            Webhook(
                event_type=JOB_STATUS_CHANGED,
                body_id=event.event_id,
                body=_envelope(event.event_id, created_at, JOB_STATUS_CHANGED, data),
            )
        )
    return made


def _envelope(body_id: str, created_at: int, event_type: str, data: dict[str, Any]) -> str:
    body = {"id": body_id, "object": "event", "created_at": created_at, "type": event_type}
    return json.dumps({**body, "data": data}, separators=(",", ":"))


def backoff_seconds(attempt: int, policy: RetryPolicy, rand: float) -> float:
    """The wait after failed attempt `attempt` (1-based), jittered by `rand` in [0, 1)."""
    ceiling = min(policy.max_delay_seconds, policy.base_seconds * 2 ** min(attempt - 1, 40))
    return ceiling * (0.5 + rand / 2)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A `Retry-After` header (seconds or an HTTP date) as seconds from `now`; None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), 10**7))
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, (at - now).total_seconds()) if at.tzinfo else None


def judge(
    *,
    status_code: int | None,
    error: str | None,
    retry_after: str | None,
    attempt: int,
    first_attempt_at: datetime,
    now: datetime,
    policy: RetryPolicy,
    rand: float,
) -> Outcome:
    """The outcome of attempt `attempt` that answered `status_code` (None: no answer, `error`
    says why: a timeout, a refused connection). Timeouts, connection errors, 408, 429 and 5xx
    are retried; a redirect is not followed and fails, as does any other 4xx; 410 Gone also
    disables the endpoint."""
    if status_code is not None and 200 <= status_code < 300:
        return Outcome(status="delivered")
    if status_code is not None and 300 <= status_code < 400:
        return Outcome(status="failed", error=f"redirect ({status_code}) not followed")
    if status_code == 410:
        reason = "the endpoint answered 410 Gone"
        return Outcome(status="failed", error=reason, disable_reason=reason)
    retryable = status_code is None or status_code in (408, 429) or status_code >= 500
    what = error or f"HTTP {status_code}"
    if not retryable:
        return Outcome(status="failed", error=what)
    delay = backoff_seconds(attempt, policy, rand)
    asked = retry_after_seconds(retry_after, now) if status_code in (429, 503) else None
    if asked is not None:
        delay = max(delay, asked)
    window_end = first_attempt_at + timedelta(seconds=policy.window_seconds)
    if now >= window_end:
        reason = f"{what}; gave up after retrying for {policy.window_seconds:.0f} s"
        return Outcome(status="failed", error=reason, disable_reason=reason)
    return Outcome(
        status="retry", error=what, next_attempt_at=min(now + timedelta(seconds=delay), window_end)
    )


def should_disable(consecutive_failures: int, policy: RetryPolicy) -> bool:
    return consecutive_failures >= policy.disable_after_failures
