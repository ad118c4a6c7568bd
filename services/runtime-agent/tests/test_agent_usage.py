"""Usage summed from engine replies: tables only, no I/O."""

from __future__ import annotations

import json

import pytest

from neobatch.common.contracts import Usage
from neobatch.runtime_agent.results.output_files import UsageSum


def reply(
    prompt: int, completion: int, total: int | None = None, details: object = "absent"
) -> bytes:
    usage: dict[str, object] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if details != "absent":
        usage["prompt_tokens_details"] = details
    if total is not None:
        usage["total_tokens"] = total
    return json.dumps({"id": "x", "choices": [], "usage": usage}).encode()


@pytest.mark.parametrize(
    ("bodies", "expected"),
    [
        ([], Usage(0, 0, 0)),
        ([reply(3, 5, 8), reply(1, 2, 3)], Usage(4, 7, 11)),
        # Embeddings report no completion tokens; a missing total is prompt + completion.
        ([reply(7, 0, 7), reply(2, 3)], Usage(9, 3, 12)),
        # Replies without usage, or not JSON at all, count nothing.
        ([b'{"id": "x"}', b"not json", None, b'{"usage": "odd"}', reply(1, 1, 2)], Usage(1, 1, 2)),
        # vLLM with --enable-prompt-tokens-details: the prefix cache's hits, summed; null or
        # missing details (the switch off) count none.
        (
            [
                reply(300, 32, 332, {"cached_tokens": 256}),
                reply(300, 32, 332, {"cached_tokens": 0}),
                reply(310, 32, 342, None),
                reply(310, 32, 342, {"cached_tokens": None}),
                reply(310, 32, 342, {"cached_tokens": 128, "audio_tokens": None}),
            ],
            Usage(1530, 160, 1690, cached_tokens=384),
        ),
    ],
)
def test_usage_sum(bodies: list[bytes | None], expected: Usage) -> None:
    total = UsageSum()
    for body in bodies:
        total.add(body)
    assert total.usage() == expected
