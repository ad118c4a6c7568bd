"""The notifier's pure decisions: the retry schedule spans the whole window, Retry-After wins,
what is final, and the bodies OpenAI's SDK expects."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest

from neobatch.common.contracts import JobStatusChanged
from neobatch.notifier.policy import RetryPolicy, judge, retry_after_seconds, webhooks_for

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy()  # production's: 5 s doubling to 1 h, for 24 h


@pytest.mark.parametrize("rand", [0.0, 0.999])
def test_a_failing_delivery_is_retried_for_24_hours_then_given_up(rand: float) -> None:
    now, attempt, times = T0, 1, []
    while True:
        outcome = judge(
            status_code=503,
            error=None,
            retry_after=None,
            attempt=attempt,
            first_attempt_at=T0,
            now=now,
            policy=POLICY,
            rand=rand,
        )
        if outcome.status != "retry":
            break
        assert outcome.next_attempt_at is not None
        times.append(outcome.next_attempt_at)
        now, attempt = outcome.next_attempt_at, attempt + 1
    assert outcome.status == "failed" and outcome.disable_reason
    assert now == T0 + timedelta(hours=24)  # the last attempt is at the window's end
    gaps = [(b - a).total_seconds() for a, b in zip([T0, *times], times, strict=False)]
    assert gaps[0] >= 2.5 and max(gaps) <= 3600
    assert all(b >= a for a, b in itertools.pairwise(gaps[:9]))  # exponential at first
    print(f"rand={rand}: {attempt} attempts over 24 h")


def test_retry_after_wins_over_a_shorter_backoff_and_is_read_as_a_date_too() -> None:
    outcome = judge(
        status_code=429,
        error=None,
        retry_after="120",
        attempt=1,
        first_attempt_at=T0,
        now=T0,
        policy=POLICY,
        rand=0.5,
    )
    assert outcome.next_attempt_at == T0 + timedelta(seconds=120)
    assert retry_after_seconds("Thu, 03 Dec 2026 12:01:00 GMT", T0) == 60
    assert retry_after_seconds("soon", T0) is None


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (200, "delivered"),
        (204, "delivered"),
        (500, "retry"),
        (408, "retry"),
        (429, "retry"),
        (None, "retry"),
        (302, "failed"),
        (400, "failed"),
        (404, "failed"),
        (410, "failed"),
    ],
)
def test_what_each_answer_means(code: int | None, status: str) -> None:
    outcome = judge(
        status_code=code,
        error=None if code else "timed out",
        retry_after=None,
        attempt=1,
        first_attempt_at=T0,
        now=T0,
        policy=POLICY,
        rand=0.5,
    )
    assert outcome.status == status
    assert bool(outcome.disable_reason) == (code == 410)


def test_bodies_are_openais_for_batch_events() -> None:
    event = JobStatusChanged(
        job_id="job_1", old_status="in_progress", new_status="resource_failed", occurred_at=T0
    )
    hooks = webhooks_for(event, "batch_1", {"batch.failed", "job.status_changed"})
    assert [h.event_type for h in hooks] == ["batch.failed", "job.status_changed"]
    body = json.loads(hooks[0].body)
    assert body == {
        "id": hooks[0].body_id,
        "object": "event",
        "created_at": int(T0.timestamp()),
        "type": "batch.failed",
        "data": {"id": "batch_1"},
    }
    assert webhooks_for(event, "batch_1", {"batch.completed"}) == []
