"""End to end: a shuffled batch whose requests share a few system prompts is sent grouped by
prompt prefix (the engine simulator's request log shows the order it answered them), the
output file stays in input order, and the batch's usage counts the prefix cache's hits.

The simulator runs with vLLM's `--enable-prefix-caching --enable-prompt-tokens-details` and a
cache of 8 blocks of 16 words: room for two system prompts of 4 blocks. Sent grouped, every
request but the first of each prompt finds its prompt cached; sent in the shuffled input order,
the prompt a request needs was mostly evicted by the other prompts in between.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import MODEL, ConsoleClient, sim_engine_template

REQUESTS = 300
PROMPTS = 5
PROMPT_WORDS = 64  # 4 blocks of 16 words (the simulator's tokens)
CONCURRENCY = 16


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = Ports.free()
    env = {"NEOBATCH_DB": "prefix_order", "NEOBATCH_SSH_POOL": f"u0@127.0.0.1:{ports.ssh}"}
    with start_stack(tmp_path_factory.mktemp("stack"), ports, env) as started:
        yield started


def _lines() -> tuple[list[dict[str, Any]], list[int]]:
    rng = random.Random(14)
    systems = [
        " ".join(f"p{p}w{w}" for w in range(PROMPT_WORDS)) for p in range(PROMPTS)
    ]  # distinct from their first word on
    groups = [rng.randrange(PROMPTS) for _ in range(REQUESTS)]
    lines = [
        {
            "custom_id": f"q-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": systems[group]},
                    {"role": "user", "content": f"question number {i} please"},
                ],
                "max_tokens": 8,
            },
        }
        for i, group in enumerate(groups)
    ]
    return lines, groups


def test_shared_prefixes_are_sent_together_and_counted_as_cached(
    stack: Stack, tmp_path: Path
) -> None:
    console = ConsoleClient.for_stack(stack)
    model_id = console.ensure_model()
    lines, groups = _lines()
    file_id = console.upload(lines)
    log = tmp_path / "answered.jsonl"
    template = sim_engine_template("prefix-order", model_id, request_log=str(log), latency_ms=2)
    template["spec"]["engine"]["command"] += [
        "--enable-prefix-caching", "--enable-prompt-tokens-details", "--cache-blocks", "8",
    ]  # fmt: skip
    console.create_template(model_id, template)
    client = {"max_concurrency": CONCURRENCY}
    job = console.create_job(file_id, model_id, "prefix-order", client=client)
    job = console.wait_settled(job["id"], 90)
    assert job["status"] == "completed", job.get("error_message")
    batch_id = job["batch_id"]

    answered = [json.loads(x) for x in log.read_text().splitlines()]
    order = [int(x["request_id"].removeprefix(f"{batch_id}-")) for x in answered]
    changes = sum(1 for a, b in pairwise(order) if groups[a] != groups[b])
    shuffled = sum(1 for a, b in pairwise(range(REQUESTS)) if groups[a] != groups[b])
    output = console.file_lines(job["output_dataset"])
    usage = job["usage"]
    cached = sum(
        x["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"] for x in output
    )
    ideal = (REQUESTS - PROMPTS) * PROMPT_WORDS
    print(f"\nprompt changes: {changes} as sent, {shuffled} in input order")
    print(f"cached tokens: {usage['input_tokens_details']['cached_tokens']} (ideal {ideal})")

    # The engine answered the requests grouped by system prompt: one run per prompt, give or
    # take the requests in flight where one group ends and the next begins.
    assert sorted(order) == list(range(REQUESTS))
    assert changes <= (PROMPTS - 1) * 2 * CONCURRENCY // 4, changes
    assert shuffled > 150

    # The output file is in input order, every custom_id once.
    assert [x["custom_id"] for x in output] == [x["custom_id"] for x in lines]
    assert not job.get("error_dataset")

    # Usage: every request but the first of each prompt had its 64 prompt tokens cached.
    assert usage["input_tokens_details"]["cached_tokens"] == cached
    assert usage["input_tokens"] == REQUESTS * (PROMPT_WORDS + 4)
    assert cached >= 0.9 * ideal
