"""Prefix-aware dispatch order: tables, and its replay over a stub input file (no I/O)."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest

from neobatch.runtime_agent.batch.dispatch_pass import ordered_requests
from neobatch.runtime_agent.dispatch.order import (
    LEVEL_CHARS,
    NO_LEAF,
    DispatchPlan,
    OrderPlanner,
    key_of_text,
    leading_text,
    prefix_key,
)

SYSTEM = "You are a careful assistant. " * 40  # ~1,200 characters


def chat(*messages: tuple[str, Any], **extra: Any) -> bytes:
    body = {"model": "m", "messages": [{"role": r, "content": c} for r, c in messages], **extra}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # The last message (the question) is left out: the system prompt is the prefix.
        (chat(("system", "S"), ("user", "q1")), "\x1esystem:S"),
        (
            chat(("system", "S"), ("user", "u"), ("assistant", "a"), ("user", "q")),
            "\x1esystem:S\x1euser:u\x1eassistant:a",
        ),
        # One message: the message itself is the prefix.
        (chat(("user", "only")), "\x1euser:only"),
        # Content parts: text joined, an image part kept as JSON.
        (
            chat(
                ("user", [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
                ("user", "q"),
            ),
            "\x1euser:ab",
        ),
        (
            chat(("user", [{"type": "image_url", "image_url": {"url": "u"}}]), ("user", "q")),
            '\x1euser:{"image_url":{"url":"u"},"type":"image_url"}',
        ),
        # Tools are rendered before the messages by chat templates.
        (chat(("system", "S"), ("user", "q"), tools=[{"x": 1}]), '[{"x": 1}]\x1esystem:S'),
        (b'{"model": "m", "prompt": "hello world"}', "hello world"),
        (b'{"model": "m", "prompt": ["first", "second"]}', "first"),
        (b'{"model": "m", "prompt": [1, 2, 3]}', "1,2,3"),
        (b'{"model": "m", "prompt": [[4, 5], [6]]}', "4,5"),
        (b'{"model": "m", "input": "embed me"}', "embed me"),
        # Nothing readable: the empty text, never an exception.
        (b"not json", ""),
        (b'{"messages": "odd"}', ""),
        (b'{"messages": [1, 2]}', ""),
        (b'{"model": "m"}', ""),
    ],
)
def test_leading_text(body: bytes, expected: str) -> None:
    assert leading_text(body) == expected


def test_leading_text_is_bounded() -> None:
    huge = chat(("system", "x" * 100_000), ("user", "q"))
    assert len(leading_text(huge)) == LEVEL_CHARS[-1]
    many = chat(*[("user", "y")] * 100_000, ("user", "q"))
    assert len(leading_text(many)) < 64 * 10


def test_keys_share_the_levels_their_texts_share() -> None:
    base = "p" * 3000
    same_512 = key_of_text(base[:1000] + "DIFFERENT")
    same_2048 = key_of_text(base[:2500] + "DIFFERENT")
    whole = key_of_text(base)
    assert whole[0] == same_512[0] and whole[1:] != same_512[1:]
    assert whole[:2] == same_2048[:2] and whole[2] != same_2048[2]
    # A text shorter than a level repeats the shallower hashes' text: equal texts, equal keys.
    assert key_of_text("short") == key_of_text("short")
    assert prefix_key(chat(("system", "S"), ("user", "a"))) == prefix_key(
        chat(("system", "S"), ("user", "b"))
    )


def plan_of(
    keys: list[str | None],
    *,
    grouped: bool = True,
    buffer_bytes: int = 10**9,
    sizes: list[int] | None = None,
) -> DispatchPlan:
    planner = OrderPlanner(grouped=grouped)
    for i, text in enumerate(keys):
        if text is None:
            planner.skip()
        else:
            planner.add(key_of_text(text), sizes[i] if sizes else 100)
    return planner.plan(buffer_bytes)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        # Groups in first-appearance order, input order inside a group.
        (["A", "B", "A", "C", "B", "A"], [0, 2, 5, 1, 4, 3]),
        # No shared prefix at all: input order.
        (["a", "b", "c", "d"], [0, 1, 2, 3]),
        (["A", "A", "A"], [0, 1, 2]),
        # Lines not to send (finished before a resume, blank) are left out.
        ([None, "B", "A", None, "B"], [1, 4, 2]),
        ([], []),
    ],
)
def test_groups_by_first_appearance(keys: list[str | None], expected: list[int]) -> None:
    assert plan_of(keys).order() == expected
    # Off: input order.
    assert plan_of(keys, grouped=False).order() == [i for i, k in enumerate(keys) if k]


def test_the_trie_groups_deeper_prefixes_inside_shallower_ones() -> None:
    shared = "s" * 600  # one level-1 group, two level-2 groups inside it
    keys = [shared + "X" * 2000 + "1", "other", shared + "Y" * 2000, shared + "X" * 2000 + "2"]
    assert plan_of(keys).order() == [0, 3, 2, 1]


def replay(plan: DispatchPlan, lines: int) -> tuple[list[int], int, int]:
    """What the agent's passes do with the plan: (order, reads of the file, most bytes held)."""
    number, streamed = plan.sweep_of()
    out: list[int] = []
    most = 0
    sizes = plan_sizes[id(plan)]
    for n, sweep in enumerate(plan.sweeps):
        buffered: dict[int, list[int]] = {leaf: [] for leaf in sweep.buffered}
        held = 0
        for line in range(lines):
            leaf = plan.leaf_of[line]
            if leaf == NO_LEAF or number[leaf] != n:
                continue
            if streamed[leaf]:
                out.append(line)
            else:
                buffered[leaf].append(line)
                held += sizes[line]
                most = max(most, held)
        for leaf in sweep.buffered:
            out.extend(buffered[leaf])
    return out, len(plan.sweeps), most


plan_sizes: dict[int, list[int]] = {}


@pytest.mark.parametrize("seed", range(30))
def test_sweeps_replay_the_order_exactly_once_within_the_buffer(seed: int) -> None:
    rng = random.Random(seed)
    lines = rng.randint(0, 400)
    groups = rng.choice([1, 3, 20, 500])
    keys = [None if rng.random() < 0.1 else f"g{rng.randrange(groups)}" for _ in range(lines)]
    sizes = [rng.randint(1, 50) for _ in range(lines)]
    budget = rng.choice([1, 100, 1000, 10**9])
    plan = plan_of(keys, buffer_bytes=budget, sizes=sizes)
    plan_sizes[id(plan)] = sizes
    order, reads, most = replay(plan, lines)
    assert order == plan.order()
    assert sorted(order) == [i for i, k in enumerate(keys) if k is not None]  # each once
    assert most <= budget  # raw lines held by one read of the file
    if budget >= sum(sizes):
        assert reads <= 1


def test_input_order_and_unique_prompts_read_the_file_once() -> None:
    keys = [f"unique {i}" for i in range(1000)]
    assert len(plan_of(keys, buffer_bytes=1).sweeps) == 1
    assert len(plan_of(["A", "B"] * 500, grouped=False, buffer_bytes=1).sweeps) == 1
    # Shuffled groups and no room to buffer: one read per group, still bounded.
    assert len(plan_of(["A", "B", "C"] * 100, buffer_bytes=1).sweeps) == 3


class _Lines:
    """A store whose input file is `lines` and which counts the reads of it."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.reads = 0

    async def input_lines(self, file_id: str) -> Any:
        self.reads += 1
        for line in self.lines:
            yield line


def _line(custom_id: str, system: str, question: str) -> bytes:
    body = json.loads(chat(("system", system), ("user", question)))
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    ).encode()


async def test_ordered_requests_groups_a_shuffled_batch_and_skips_what_is_done() -> None:
    systems = [f"{name} {SYSTEM}" for name in ("alpha", "beta", "gamma")]
    rng = random.Random(7)
    lines = [_line(f"c{i}", rng.choice(systems), f"question {i}") for i in range(60)]
    lines[0] = b"\xef\xbb\xbf" + lines[0]  # a byte-order mark on the first line is dropped
    lines[5] = b"   "  # blank: not a request
    store = _Lines(lines)
    done = {1, 2, 30}
    sent = [r async for r in ordered_requests(store, "file", done)]  # type: ignore[arg-type]

    indexes = [r.line_index for r in sent]
    assert sorted(indexes) == [i for i in range(60) if i not in done and i != 5]
    assert [r.custom_id for r in sent] == [f"c{i}" for i in indexes]
    # Each system prompt's requests are one contiguous run, in input order inside it.
    runs = [json.loads(bytes(r.body))["messages"][0]["content"] for r in sent]
    changes = sum(1 for a, b in itertools.pairwise(runs) if a != b)
    assert changes == 2
    assert all(
        [i for i, s in zip(indexes, runs, strict=True) if s == system]
        == sorted(i for i, s in zip(indexes, runs, strict=True) if s == system)
        for system in systems
    )
    assert store.reads == 2  # one to plan, one to send (everything fits the buffer)

    tight = _Lines(lines)
    again = [r.line_index async for r in ordered_requests(tight, "f", done, buffer_bytes=1)]  # type: ignore[arg-type]
    assert again == indexes and tight.reads == 1 + 3  # one read per group
