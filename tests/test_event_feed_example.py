"""The example subscriber's ordering rules (examples/subscriber.py `Feed`), on deliveries out of
order, duplicated and with a gap: what docs/events.md tells integrations to do."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("feed_example", ROOT / "examples" / "subscriber.py")
assert spec is not None and spec.loader is not None
example = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = example  # dataclasses look their module up while it loads
spec.loader.exec_module(example)


def change(job: str, old: str | None, new: str, version: int) -> dict[str, Any]:
    return {
        "event_id": f"evt_{job}_{version}",
        "job_id": job,
        "old_status": old,
        "new_status": new,
        "job_version": version,
        "occurred_at": f"2026-12-03T16:00:{version:02d}Z",
    }


def printed(feed: Any, now: float) -> list[tuple[str, str]]:
    return [(h.event["job_id"], h.event["new_status"]) for h in feed.ready(now)]


def test_a_change_waits_for_its_predecessor_and_copies_are_dropped() -> None:
    feed = example.Feed(hold_seconds=5)
    # The planner's move arrives before the console's creation (two outboxes).
    assert feed.add(change("a", "queued", "resource_preparing", 2), "m2", now=0)
    assert printed(feed, now=0) == []
    assert feed.add(change("a", None, "queued", 1), "m1", now=0.1)
    assert feed.add(change("b", None, "queued", 1), "n1", now=0.1)
    assert printed(feed, now=0.1) == [
        ("a", "queued"),
        ("a", "resource_preparing"),
        ("b", "queued"),
    ]
    # A redelivery of a change already printed is recognised and not printed again.
    assert not feed.add(change("a", None, "queued", 1), "m1-again", now=1)
    assert printed(feed, now=1) == []


def test_a_missing_predecessor_is_given_up_on_after_the_hold() -> None:
    feed = example.Feed(hold_seconds=5)
    feed.add(change("a", None, "queued", 1), "m1", now=0)
    assert printed(feed, now=0) == [("a", "queued")]
    # queued -> resource_preparing (v2) never comes (older than the stream's retention, say).
    feed.add(change("a", "submitting", "batch_created", 4), "m4", now=1)
    feed.add(change("a", "resource_preparing", "submitting", 3), "m3", now=1)
    assert printed(feed, now=5.9) == []
    assert printed(feed, now=6) == [("a", "submitting"), ("a", "batch_created")]


def test_memory_is_bounded_by_forgetting_idle_jobs() -> None:
    feed = example.Feed(hold_seconds=5, max_jobs=3)
    for i in range(10):
        feed.add(change(f"j{i}", None, "queued", 1), f"m{i}", now=0)
        printed(feed, now=0)
    assert len(feed.jobs) <= 3
