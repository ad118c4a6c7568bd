"""The validator's custom_id memory: the same answers as a set, in a fraction of its bytes."""

from __future__ import annotations

import random
import sys

from neobatch.common.batch_input import InputValidator
from neobatch.common.seen_ids import SeenIds


def test_answers_like_a_set_through_every_growth() -> None:
    rng = random.Random(15)
    seen, reference = SeenIds(), set()
    # 20,000 draws from 12,000 ids: about 9,700 distinct, so repeats land before and after
    # each of the table's doublings (1,024 slots first).
    for _ in range(20_000):
        custom_id = f"req-{rng.randrange(12_000)}"
        assert seen.add(custom_id) is (custom_id not in reference), custom_id
        reference.add(custom_id)
    assert len(seen) == len(reference)
    assert all(not seen.add(custom_id) for custom_id in reference)


def test_ids_that_differ_only_in_case_unicode_or_a_lone_surrogate_are_distinct() -> None:
    seen = SeenIds()
    ids = ["a", "A", "é", "e\u0301", "\ud800", "\udfff", "", " ", "a "]
    assert all(seen.add(custom_id) for custom_id in ids)
    assert not any(seen.add(custom_id) for custom_id in ids)


def test_a_hundred_thousand_ids_take_at_most_32_bytes_each_where_a_set_takes_about_90() -> None:
    ids = [f"request-{i}" for i in range(100_000)]
    seen = SeenIds()
    for custom_id in ids:
        seen.add(custom_id)
    as_set = set(ids)
    set_bytes = sys.getsizeof(as_set) + sum(sys.getsizeof(custom_id) for custom_id in ids)
    assert seen.nbytes <= 32 * len(ids)
    assert set_bytes > 3 * seen.nbytes


def test_the_validator_still_names_the_line_of_a_repeated_custom_id() -> None:
    validator = InputValidator("/v1/chat/completions")
    line = '{{"custom_id": "{}", "method": "POST", "url": "/v1/chat/completions", "body": {{}}}}'
    for index, custom_id in enumerate(["x", "y", "é", "x", "e\u0301", "é"]):
        validator.feed(index, line.format(custom_id).encode())
    report = validator.report()
    assert report.total == 4
    assert [(e.line, e.code) for e in report.errors] == [
        (4, "duplicate_custom_id"),
        (6, "duplicate_custom_id"),
    ]
