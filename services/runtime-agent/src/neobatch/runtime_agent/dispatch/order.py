"""Prefix-aware dispatch order: requests that share a prompt prefix go out together. Pure.

vLLM's prefix cache keeps the KV blocks of prompts it has seen (128 tokens a block on CPU, 16
on a GPU), so a request whose leading tokens (system prompt, few-shot block, shared document)
were computed moments ago skips that prefill. In a shuffled batch the same prefix comes back
only after the cache may have evicted it; sent together, every request but the first hits.

`prefix_key` maps a request body to a `PrefixKey`: 64-bit hashes of its canonical leading
text cut at `LEVEL_CHARS` (512, 2048, 8192 characters). The leading text of a chat request is
its `tools` and every message but the last (the last is usually the unique question); with a
single message, or for completions and embeddings, the prompt itself. The levels make the
grouping a trie of fixed depth: requests sharing 512 characters go together, inside that those
sharing 2048, and so on; a prefix shorter than a level repeats its hash, so nothing is split.

`OrderPlanner` is fed each pending line (index, key, bytes) in input order and returns a
`DispatchPlan`: the order of the leaves (requests with the same full key), each trie level in
first-appearance order, lines in input order inside a leaf. So requests without any shared
prefix keep their input order, and a leaf (a group) is always contiguous, which a split of the
batch into chunks can cut between.

The plan holds no bodies: per line 4 bytes (its leaf), per distinct key one dict entry while
planning, per leaf a few integers. Replaying it against the file in bounded memory is the
`sweeps` of the plan: a sweep reads the file once, yielding its first leaves as they stream
past (while their lines come in increasing order) and buffering the raw lines of the leaves
after them up to `buffer_bytes`, yielded when the file ends.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import msgspec

PrefixKey = tuple[int, ...]
# Characters of leading text hashed at each level (about 128, 512 and 2048 tokens).
LEVEL_CHARS = (512, 2048, 8192)
# Leading messages decoded at most, whatever the chars: a line of 100,000 tiny messages costs
# no more than this.
MAX_MESSAGES = 64
NO_LEAF = 0xFFFFFFFF
_SEPARATOR = "\x1e"
_INPUT_ORDER: PrefixKey = (0,) * len(LEVEL_CHARS)


class _Body(msgspec.Struct):
    messages: list[msgspec.Raw] | None = None
    prompt: Any = None
    input: Any = None
    tools: msgspec.Raw = msgspec.Raw()  # `Raw | None` is not a type msgspec decodes


class _Message(msgspec.Struct):
    role: Any = None
    content: Any = None


_BODY = msgspec.json.Decoder(_Body)
_MESSAGE = msgspec.json.Decoder(_Message)
_ENCODE = msgspec.json.Encoder(order="sorted")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # parts: text, or an image/audio reference kept as JSON
        return "".join(
            part["text"]
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            # An image part's URL is what the engine keys its cache by: part of the prefix.
            else _ENCODE.encode(part).decode()
            for part in content
        )
    return "" if content is None else _ENCODE.encode(content).decode()


def _prompt_text(prompt: Any) -> str:
    """A completions `prompt` / embeddings `input`: a string, strings, token ids, id lists."""
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str | list):
            return _prompt_text(first)  # several prompts: the first decides the group
        return ",".join(str(token) for token in prompt[: LEVEL_CHARS[-1]])
    return prompt if isinstance(prompt, str) else ""


def leading_text(body: bytes) -> str:
    """The canonical leading text of a request body, at most `LEVEL_CHARS[-1]` characters.

    Never raises: a body it cannot read has the empty text (all such lines form one group,
    in input order).
    """
    limit = LEVEL_CHARS[-1]
    try:
        decoded = _BODY.decode(body)
        if decoded.messages is None:
            return _prompt_text(decoded.prompt if decoded.prompt is not None else decoded.input)[
                :limit
            ]
        messages = decoded.messages
        leading = messages[:-1] if len(messages) > 1 else messages
        tools = bytes(decoded.tools)
        parts = [tools.decode()] if tools not in (b"", b"null") else []
        size = sum(len(p) for p in parts)
        for raw in leading[:MAX_MESSAGES]:
            if size >= limit:
                break
            message = _MESSAGE.decode(raw)
            role = message.role if isinstance(message.role, str) else ""
            part = f"{_SEPARATOR}{role}:{_content_text(message.content)}"
            parts.append(part)
            size += len(part)
        return "".join(parts)[:limit]
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return ""


def key_of_text(text: str) -> PrefixKey:
    """One hash per level: of the text's first `LEVEL_CHARS[i]` characters.

    Python's own string hash (SipHash, 64 bits): ~3x faster than hashlib here, and a plan lives
    in one process (it is never stored), so a per-process hash seed changes nothing.
    """
    return tuple(hash(text[:cut]) for cut in LEVEL_CHARS)


def prefix_key(body: bytes) -> PrefixKey:
    """The prefix key of a request body (raw JSON)."""
    return key_of_text(leading_text(body))


@dataclass(frozen=True)
class Sweep:
    """One read of the input file: `streamed` leaves are yielded as their lines go by (each
    one's lines all after the previous one's), then the `buffered` leaves, in this order."""

    streamed: tuple[int, ...]
    buffered: tuple[int, ...]


@dataclass(frozen=True)
class DispatchPlan:
    """Where each pending line goes: `leaf_of[line]` (NO_LEAF: not sent), leaves in `sweeps`."""

    leaf_of: array[int]
    sweeps: tuple[Sweep, ...]
    leaves: int
    lines: int

    def sweep_of(self) -> tuple[array[int], array[int]]:
        """(sweep number, 1 if streamed) per leaf: what a pass asks of each line's leaf."""
        number = array("I", [0]) * self.leaves
        streamed = array("B", [0]) * self.leaves
        for n, sweep in enumerate(self.sweeps):
            for leaf in sweep.streamed:
                number[leaf], streamed[leaf] = n, 1
            for leaf in sweep.buffered:
                number[leaf] = n
        return number, streamed

    def order(self) -> list[int]:
        """Every planned line index in dispatch order (for tests and small batches)."""
        by_leaf: list[list[int]] = [[] for _ in range(self.leaves)]
        for line, leaf in enumerate(self.leaf_of):
            if leaf != NO_LEAF:
                by_leaf[leaf].append(line)
        return [
            line
            for sweep in self.sweeps
            for leaf in (*sweep.streamed, *sweep.buffered)
            for line in by_leaf[leaf]
        ]


class OrderPlanner:
    """Feed each line in input order (`add` for a request, `skip` for anything not sent)."""

    def __init__(self, *, grouped: bool = True) -> None:
        self._grouped = grouped
        # Per level but the last: hash -> node id, numbered in first-appearance order.
        self._nodes: list[dict[int, int]] = [{} for _ in LEVEL_CHARS[:-1]]
        self._leaves: dict[int, int] = {}
        self._leaf_of = array("I")
        # Per leaf: its path of node ids (levels but the last), bytes, first and last line.
        self._paths: list[array[int]] = [array("I") for _ in LEVEL_CHARS[:-1]]
        self._bytes = array("Q")
        self._first = array("I")
        self._last = array("I")

    def skip(self) -> None:
        self._leaf_of.append(NO_LEAF)

    def add(self, key: PrefixKey, size: int) -> None:
        line = len(self._leaf_of)
        if not self._grouped:
            key = _INPUT_ORDER  # one leaf: every line in input order, one read of the file
        leaf = self._leaves.get(key[-1])
        if leaf is None:
            leaf = self._leaves[key[-1]] = len(self._bytes)
            for level, nodes in enumerate(self._nodes):
                self._paths[level].append(nodes.setdefault(key[level], len(nodes)))
            self._bytes.append(0)
            self._first.append(line)
            self._last.append(line)
        self._bytes[leaf] += size
        self._last[leaf] = line
        self._leaf_of.append(leaf)

    def plan(self, buffer_bytes: int) -> DispatchPlan:
        leaves = len(self._bytes)
        paths = self._paths
        ranked = sorted(range(leaves), key=lambda leaf: (*(p[leaf] for p in paths), leaf))
        sweeps: list[Sweep] = []
        streamed: list[int] = []
        buffered: list[int] = []
        cursor, held = -1, 0
        for leaf in ranked:
            if not buffered and self._first[leaf] > cursor:
                streamed.append(leaf)  # its lines all come after the previous leaf's
                cursor = self._last[leaf]
                continue
            size = self._bytes[leaf]
            if held + size > buffer_bytes:  # a new read of the file, starting with this leaf
                sweeps.append(Sweep(tuple(streamed), tuple(buffered)))
                streamed, buffered, held, cursor = [leaf], [], 0, self._last[leaf]
                continue
            buffered.append(leaf)
            held += size
        if streamed or buffered:
            sweeps.append(Sweep(tuple(streamed), tuple(buffered)))
        self._nodes = [{} for _ in self._nodes]
        self._leaves = {}
        return DispatchPlan(self._leaf_of, tuple(sweeps), leaves, len(self._leaf_of))
