"""A simulated prefix cache: what vLLM reports as `usage.prompt_tokens_details.cached_tokens`.

Deterministic and simple: a prompt is its words (the simulator's tokens, as in `replies`), cut
into blocks of `block_size`; each full block is keyed by a hash chained over the blocks before
it, as vLLM keys its KV blocks. A request reuses the leading blocks already cached and then
caches all of its own, the least recently used block leaving when `capacity_blocks` are held.
Like vLLM, at least the prompt's last token is always computed (a fully cached prompt that
ends on a block boundary gives its last block back). Requests are cached in the order they are
answered, so with concurrency the counts depend on arrival order, as on a real engine.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

DEFAULT_BLOCK_SIZE = 16  # vLLM's block size on a GPU (128 on its CPU build)
DEFAULT_CAPACITY_BLOCKS = 4096


def _text_words(content: Any) -> list[str]:
    if isinstance(content, str):
        return content.split()
    if isinstance(content, list):
        return [w for part in content for w in _text_words(part)]
    if isinstance(content, dict):
        return _text_words(content.get("text"))
    return []


def prompt_words(body: dict[str, Any]) -> list[str]:
    """The simulator's tokens of a chat or completions prompt (its words, as `replies` counts)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return [
            word
            for message in messages
            if isinstance(message, dict)
            for word in _text_words(message.get("content"))
        ]
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    return prompt.split() if isinstance(prompt, str) else []


class PrefixCache:
    def __init__(
        self, block_size: int = DEFAULT_BLOCK_SIZE, capacity_blocks: int = DEFAULT_CAPACITY_BLOCKS
    ) -> None:
        self.block_size = max(1, block_size)
        self.capacity_blocks = max(1, capacity_blocks)
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self.queries = 0
        self.hits = 0

    def lookup_and_insert(self, words: list[str], prompt_tokens: int) -> int:
        """Cached tokens of this prompt (at most `prompt_tokens - 1`); then cache its blocks."""
        size = self.block_size
        chain = hashlib.sha256()
        keys: list[bytes] = []
        for start in range(0, len(words) - size + 1, size):
            chain.update("\x00".join(words[start : start + size]).encode() + b"\x01")
            keys.append(chain.digest())
        hit_blocks = 0
        for key in keys:
            if key not in self._blocks:
                break
            hit_blocks += 1
        for key in keys:
            self._blocks[key] = None
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
        cached = hit_blocks * size
        if cached and cached >= prompt_tokens:
            cached -= size  # the last token is always computed
        self.queries += prompt_tokens
        self.hits += cached
        return cached
