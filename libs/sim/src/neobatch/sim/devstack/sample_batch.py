"""Write OpenAI Batch API input files (JSONL) for demos, tests and benchmarks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_TOPICS = (
    "batch inference",
    "GPU leasing",
    "JSONL files",
    "event streams",
    "idempotent consumers",
    "SSH port forwarding",
    "checkpointing",
    "deadlines",
)


def sample_request(
    index: int,
    model: str,
    endpoint: str = "/v1/chat/completions",
    max_tokens: int = 64,
) -> dict[str, Any]:
    """One batch input line as a dict; the same index always gives the same request."""
    topic = _TOPICS[index % len(_TOPICS)]
    prompt = f"Request {index}: explain {topic} in one sentence."
    body: dict[str, Any]
    if endpoint == "/v1/chat/completions":
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        }
    elif endpoint == "/v1/completions":
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
    elif endpoint == "/v1/embeddings":
        # Embedding requests take no max_tokens in the OpenAI API.
        body = {"model": model, "input": prompt}
    else:
        raise ValueError(f"unsupported endpoint {endpoint!r}")
    return {"custom_id": f"request-{index}", "method": "POST", "url": endpoint, "body": body}


def write_sample_batch(
    path: str | os.PathLike[str],
    n: int,
    model: str,
    endpoint: str = "/v1/chat/completions",
    max_tokens: int = 64,
) -> Path:
    """Write ``n`` batch lines with custom ids ``request-1`` .. ``request-n`` and return the path."""
    if n < 0:
        raise ValueError("n must be >= 0")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8") as out:
        for index in range(1, n + 1):
            line = sample_request(index, model, endpoint, max_tokens)
            # Compact separators keep big batches small; JSONL needs no pretty-printing.
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    return target
