"""The queue is fair across projects: one project's many queued jobs do not hold back another
project's first job by more than one provisioning slot (issue 13, finding 7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from neobatch.planner.policy import choose_next, projects_to_consider, quota_prefix

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Q(msgspec.Struct, frozen=True):
    id: str
    project: str
    created_at: datetime
    replicas: int = 1


def queue(project: str, n: int, start: int = 0) -> list[Q]:
    return [Q(f"{project}{i}", project, T0 + timedelta(seconds=start + i)) for i in range(n)]


@pytest.mark.parametrize(
    ("queued", "in_use", "limit", "max_machines", "expected"),
    [
        # A queued 500 first; B's one job is next after A's first, not after A's 500.
        ({"A": queue("A", 500), "B": queue("B", 1, start=1000)}, {}, 3, 0, ["A0", "B0", "A1"]),
        # A already holds machines: B (holding none) goes first though A waited longer.
        ({"A": queue("A", 5), "B": queue("B", 2, start=100)}, {"A": 2}, 3, 0, ["B0", "B1", "A0"]),
        # Equal shares: the oldest waiting job first, then taking turns.
        (
            {"A": queue("A", 3, start=1), "B": queue("B", 3), "C": queue("C", 1, start=2)},
            {},
            6,
            0,
            ["B0", "A0", "C0", "B1", "A1", "B2"],
        ),
        # A project at its machine quota waits (stays queued); the others go on.
        ({"A": queue("A", 3), "B": queue("B", 3, start=10)}, {"A": 2}, 3, 2, ["B0", "B1"]),
        # Only one project: plain FIFO, bounded by the limit.
        ({"A": queue("A", 10)}, {}, 4, 0, ["A0", "A1", "A2", "A3"]),
        ({}, {}, 4, 0, []),
    ],
)
def test_choose_next_takes_turns_by_project(
    queued: dict[str, list[Q]],
    in_use: dict[str, int],
    limit: int,
    max_machines: int,
    expected: list[str],
) -> None:
    chosen = choose_next(queued, in_use, limit, max_machines=max_machines)
    assert [job.id for job in chosen] == expected


def test_a_job_wider_than_what_is_left_of_the_quota_waits() -> None:
    wide = Q("A0", "A", T0, replicas=3)
    chosen = choose_next({"A": [wide, Q("A1", "A", T0)]}, {"A": 1}, 4, max_machines=3)
    # Queue order within a project is kept: A1 does not overtake A0.
    assert chosen == []


def test_projects_to_consider_prefers_fewest_machines_then_the_oldest_waiting() -> None:
    heads = {"A": T0, "B": T0 + timedelta(seconds=5), "C": T0 + timedelta(seconds=1)}
    assert projects_to_consider(heads, {"A": 4}, 2) == ["C", "B"]
    assert projects_to_consider(heads, {}, 5) == ["A", "C", "B"]


def test_a_per_project_quota_overrides_the_default() -> None:
    queued = {"A": queue("A", 3), "B": queue("B", 3, start=10)}
    chosen = choose_next(queued, {}, 6, max_machines=1, quotas={"B": 2})
    assert [job.id for job in chosen] == ["A0", "B0", "B1"]


def test_quota_prefix_stops_at_the_first_placement_without_room() -> None:
    placing = [("A", 1), ("B", 0), ("A", 1), ("B", 2), ("A", 1)]
    assert quota_prefix(placing, {"A": 1}, max_machines=3) == 4  # A's third machine: none left
    assert quota_prefix(placing, {"A": 1}, max_machines=3, quotas={"A": 5}) == 5
    assert quota_prefix(placing, {"A": 2}, max_machines=2) == 0
    assert quota_prefix(placing, {"A": 9}) == 5  # no quota
