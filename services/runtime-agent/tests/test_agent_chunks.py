"""Cutting a spread batch into chunks and sharing its tail (`batch.chunks`, pure), as tables."""

from __future__ import annotations

import itertools

import pytest

from neobatch.runtime_agent.batch.chunks import (
    MAX_CHUNK_LINES,
    MIN_CHUNK_LINES,
    chunk_lines,
    pick_victim,
    plan_chunks,
    slice_lines,
    steal_split,
)


@pytest.mark.parametrize(
    ("lines", "replicas", "size"),
    [
        (600, 3, 50),  # 4 chunks per machine
        (10, 3, MIN_CHUNK_LINES),  # never tiny
        (1_000_000, 8, MAX_CHUNK_LINES),  # bounded: late joiners find unclaimed work
        (200_000, 2, MAX_CHUNK_LINES),
        (1, 1, MIN_CHUNK_LINES),
    ],
)
def test_chunk_size(lines: int, replicas: int, size: int) -> None:
    assert chunk_lines(lines, replicas) == size


def _covers(ranges: list[tuple[int, int]], lines: int) -> None:
    assert ranges[0][0] == 0 and ranges[-1][1] == lines
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(first < end for first, end in ranges)


def test_chunks_cover_every_line_once() -> None:
    ranges = plan_chunks(list(range(600)), 3)
    _covers(ranges, 600)
    assert len(ranges) == 12 and {end - first for first, end in ranges} == {50}


def test_a_cut_moves_to_the_end_of_a_prefix_group() -> None:
    # Groups of 60 lines sharing a prefix: a cut at 50 moves to 60 (within a quarter chunk).
    keys = [line // 60 for line in range(600)]
    ranges = plan_chunks(keys, 3)
    _covers(ranges, 600)
    assert all(first % 60 == 0 for first, _ in ranges)


def test_a_group_longer_than_the_slack_is_cut_where_planned() -> None:
    keys = [0] * 600  # one prefix for the whole batch: nothing to keep apart
    ranges = plan_chunks(keys, 3)
    assert [end - first for first, end in ranges] == [50] * 12


def test_no_tiny_last_chunk() -> None:
    # Size 27 (a quarter of 105), slack 6: 27, 27, 27, then the last 24 alone.
    assert plan_chunks(list(range(105)), 1) == [(0, 27), (27, 54), (54, 81), (81, 105)]
    # Size 26 (a quarter of 103), slack 6: the last 25 (within 26 + 6) stay one chunk.
    assert plan_chunks(list(range(103)), 1)[-1] == (78, 103)
    # Size 8: 3 lines would be left after the last cut; they join it.
    assert plan_chunks(list(range(35)), 10)[-1] == (24, 35)


def test_empty_batch_has_no_chunk() -> None:
    assert plan_chunks([], 4) == []


@pytest.mark.parametrize(
    ("cursor", "end", "split"),
    [(0, 100, 50), (10, 13, 12), (10, 12, 11), (10, 11, None), (10, 10, None)],
)
def test_steal_takes_the_unstarted_half(cursor: int, end: int, split: int | None) -> None:
    assert steal_split(cursor, end) == split


def test_the_victim_is_the_chunk_with_the_most_left() -> None:
    chunks = [("c1", 10, 20), ("c2", 0, 50), ("c3", 40, 90), ("c4", 5, 6)]
    assert pick_victim(chunks) == "c2"  # 50 left; c3 ties but comes later by id
    assert pick_victim([("c4", 5, 6), ("c5", 9, 9)]) is None


@pytest.mark.parametrize(("concurrency", "lines"), [(1, 8), (8, 64), (64, 512), (1024, 1024)])
def test_slice_is_eight_waves_bounded(concurrency: int, lines: int) -> None:
    assert slice_lines(concurrency) == lines
