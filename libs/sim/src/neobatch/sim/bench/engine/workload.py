"""The engine bench's inputs (plain chat, shared-prefix chat) and its direct aiohttp load generator."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neobatch.sim.real_engine.tiny_model import WORDS

CHAT = "/v1/chat/completions"
# The served name the engine answers as and the lines ask for (the local stack's model too).
MODEL = "sim-chat-1b"


def chat_line(index: int, max_tokens: int, system: str | None = None) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"Request {index}: say something about queues."}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True}
    return {"custom_id": f"req-{index}", "method": "POST", "url": CHAT, "body": body}


def chat_lines(requests: int, max_tokens: int) -> list[dict[str, Any]]:
    return [chat_line(i, max_tokens) for i in range(requests)]


def system_prompts(count: int, words: int = 190, seed: int = 7) -> list[str]:
    """`count` distinct system prompts of about 300 tokens each (190 of the tiny tokenizer's
    training words: 1.5 tokens a word), distinct from their first words on; with a request and
    32 output tokens they fit the 512-token context."""
    rng = random.Random(seed)
    return [
        f"System prompt {n}: " + " ".join(rng.choice(WORDS) for _ in range(words))
        for n in range(count)
    ]


def prefix_lines(
    requests: int, max_tokens: int, prompts: int, seed: int = 11
) -> list[dict[str, Any]]:
    """Requests over `prompts` shared system prompts, shuffled (neighbours rarely share one)."""
    systems = system_prompts(prompts)
    lines = [chat_line(i, max_tokens, systems[i % prompts]) for i in range(requests)]
    random.Random(seed).shuffle(lines)
    return lines


def write_jsonl(lines: list[dict[str, Any]], path: Path) -> Path:
    path.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
    return path


@dataclass(frozen=True)
class DirectRun:
    concurrency: int
    requests: int
    ok: int
    seconds: float
    prompt_tokens: int
    cached_tokens: int

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


async def direct_run(base_url: str, lines: list[dict[str, Any]], concurrency: int) -> DirectRun:
    """Send every line's body in input order with `concurrency` workers (asyncio + aiohttp, one
    pooled session: the client that keeps up with the engine; httpx's pool does not)."""
    import aiohttp

    bodies = [json.dumps(line["body"], separators=(",", ":")).encode() for line in lines]
    ok = prompt = cached = 0
    next_index = 0
    url = base_url + CHAT
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok, prompt, cached, next_index
        while next_index < len(bodies):
            body = bodies[next_index]
            next_index += 1
            async with session.post(url, data=body, headers=headers) as response:
                data = await response.read()
                if response.status != 200:
                    continue
            usage = json.loads(data).get("usage") or {}
            ok += 1
            prompt += usage.get("prompt_tokens") or 0
            cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return DirectRun(concurrency, len(bodies), ok, seconds, prompt, cached)


def output_usage(path: Path) -> tuple[int, int, int]:
    """(lines with a 200, prompt tokens, cached tokens) of an OpenAI-format output file."""
    ok = prompt = cached = 0
    # "\n" only: generated text may hold U+2028 or \x85, which splitlines() also breaks at.
    for raw in path.read_text().split("\n"):
        if not raw.strip():
            continue
        response = json.loads(raw).get("response") or {}
        if response.get("status_code") != 200:
            continue
        usage = (response.get("body") or {}).get("usage") or {}
        ok += 1
        prompt += usage.get("prompt_tokens") or 0
        cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return ok, prompt, cached
