"""What a job is expected to cost on a GPU type. Pure: no I/O.

Shared by the resource-manager (ranking offers, `resource_manager/ranking.py`) and the console
(quotes before a job runs, `console/jobs/quote.py`), so both price a job the same way:

    expected seconds = startup_seconds + expected_output_tokens / (throughput * machines)
    expected cost    = price_per_hour * machines * expected seconds / 3600

(`machines`: the job's replicas; each one starts up and is paid for, the work is shared.)

`throughput` is the output tokens per second one machine of that GPU family achieved for the
job's template: learned from finished batches (`throughput_samples`), else declared in the
template's `placement` block. `startup_seconds` is lease → engine answering (declared, else
DEFAULT_STARTUP_SECONDS).

The token estimate of an input file (`TokenTally`, fed line by line while the file streams):
prompt tokens are the UTF-8 bytes of the prompt text (chat `messages[].content`, `prompt`,
embeddings `input`) divided by PROMPT_BYTES_PER_TOKEN (no tokenizer runs in the control plane:
the common rule of thumb for English text with BPE tokenizers); output tokens are each line's
`max_completion_tokens` or `max_tokens` when it sets one (an upper bound: a reply may stop
early), else the template's history (output tokens per request over its finished batches),
else the template's declared `output_tokens_per_request`, else
DEFAULT_OUTPUT_TOKENS_PER_REQUEST.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

# Lease → running engine when the template declares nothing: a cloud machine boots and pulls
# the image, then vLLM loads the weights (minutes on a real GPU machine).
DEFAULT_STARTUP_SECONDS = 300.0
# Output tokens one request is expected to produce when nothing better is known.
DEFAULT_OUTPUT_TOKENS_PER_REQUEST = 256
# Prompt text bytes per token (no tokenizer in the control plane).
PROMPT_BYTES_PER_TOKEN = 4
# A batch shorter than this measures start-up noise, not throughput.
MIN_SAMPLE_SECONDS = 1.0
# Recent batches per (template, family) that make the learned figures.
LEARNED_WINDOW = 20

# "NVIDIA H100 80GB HBM3", "H100-SXM5", "gpu_1x_h100_pcie" → "H100"; "A10" never matches "A100".
_FAMILY = re.compile(
    r"(?<![A-Z0-9])(GH200|B200|H200|H100|A100|A10G|A10|A6000|A40|L40S|L40|L4|V100|T4|RTX\s?\d{4})(?![0-9])"
)


def gpu_family(name: str) -> str:
    """Normalise a GPU name to its family; unknown names compare by their upper-cased text."""
    text = name.upper().replace("_", " ")
    match = _FAMILY.search(text)
    return match.group(1).replace(" ", "") if match else text.strip()


class Estimate(msgspec.Struct, frozen=True, kw_only=True):
    """What is known about the job before it runs."""

    expected_output_tokens: int = 0
    startup_seconds: float = DEFAULT_STARTUP_SECONDS
    declared: Mapping[str, float] = {}  # GPU family → tokens/s per machine, from the template
    learned: Mapping[str, float] = {}  # GPU family → tokens/s per machine, from finished jobs
    machines: int = 1  # the job's replicas: the work is shared, each machine starts and is paid


def throughput_of(family: str, estimate: Estimate) -> tuple[float, str] | None:
    """The figure for `family`: learned first (what this template really did), else declared."""
    for source, figures in (("learned", estimate.learned), ("declared", estimate.declared)):
        value = _lookup(figures, family)
        if value:
            return value, source
    return None


def _lookup(figures: Mapping[str, float], family: str) -> float | None:
    for name, value in figures.items():
        if gpu_family(name) == family and value > 0:
            return float(value)
    return None


def expected_seconds(family: str, estimate: Estimate) -> float | None:
    """Lease → last answer on `estimate.machines` machines of `family` sharing the work; None
    when its throughput is unknown."""
    known = throughput_of(family, estimate)
    if known is None or estimate.expected_output_tokens <= 0:
        return None
    machines = max(1, estimate.machines)
    return estimate.startup_seconds + estimate.expected_output_tokens / (known[0] * machines)


def expected_cost(price_per_hour: float, family: str, estimate: Estimate) -> float | None:
    """Every machine of the job, from its lease to the last answer, at `price_per_hour`."""
    seconds = expected_seconds(family, estimate)
    if seconds is None:
        return None
    return price_per_hour * max(1, estimate.machines) * seconds / 3600


# --- learning: what finished batches teach -------------------------------------------------


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One finished batch: output tokens over the seconds spent sending requests."""

    batch_id: str
    template_key: str
    family: str
    output_tokens: int
    dispatch_seconds: float
    # Requests that finished (0: recorded before this was kept): the per-request history.
    requests: int = 0


def learned_throughput(samples: Sequence[Sample]) -> dict[str, float]:
    """GPU family → tokens/s over its samples (total tokens ÷ total seconds, so a long batch
    weighs more than a short one)."""
    tokens: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for sample in samples:
        tokens[sample.family] = tokens.get(sample.family, 0) + sample.output_tokens
        seconds[sample.family] = seconds.get(sample.family, 0.0) + sample.dispatch_seconds
    return {family: tokens[family] / seconds[family] for family in tokens if seconds[family] > 0}


def learned_tokens_per_request(samples: Sequence[Sample]) -> float | None:
    """Output tokens per finished request over the samples that counted requests."""
    counted = [s for s in samples if s.requests > 0]
    requests = sum(s.requests for s in counted)
    return sum(s.output_tokens for s in counted) / requests if requests else None


# --- the token estimate of an input file ---------------------------------------------------


class _Line(msgspec.Struct):
    """The fields of a request body the estimate reads (the rest is skipped unparsed)."""

    messages: list[Any] | None = None
    prompt: Any = None
    input: Any = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


_LINE = msgspec.json.Decoder(_Line)


def _text_bytes(value: Any, depth: int = 0) -> int:
    """UTF-8 bytes of the text in a prompt value (strings, lists of parts, message dicts)."""
    if depth > 8:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(_text_bytes(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return sum(_text_bytes(value.get(key), depth + 1) for key in ("content", "text"))
    if isinstance(value, int):  # a token id (completions/embeddings accept token arrays)
        return PROMPT_BYTES_PER_TOKEN
    return 0


# Distinct `max_tokens` values a tally keeps exactly; past that, new values are rounded up to a
# power of two (a file has a handful in practice; the bound keeps hostile files cheap).
MAX_DISTINCT_LIMITS = 1024


class TokenTally:
    """Fed each valid request body of an input file in turn, while it streams; bounded memory.

    The output estimate is made after the file was read (`output_tokens`), when the template,
    and so its history, is known.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.prompt_tokens = 0
        self.unlimited_requests = 0  # lines that set no max_(completion_)tokens
        self.limits: dict[int, int] = {}  # max_(completion_)tokens → lines that set it

    def feed(self, body: dict[str, Any] | msgspec.Raw | bytes) -> None:
        try:
            if isinstance(body, dict):
                line = msgspec.convert(body, _Line)
            else:
                line = _LINE.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            line = _Line()
        self.requests += 1
        text = _text_bytes(line.messages) + _text_bytes(line.prompt) + _text_bytes(line.input)
        self.prompt_tokens += -(-text // PROMPT_BYTES_PER_TOKEN)
        limit = line.max_completion_tokens or line.max_tokens
        if limit is None or limit <= 0:
            self.unlimited_requests += 1
            return
        if limit not in self.limits and len(self.limits) >= MAX_DISTINCT_LIMITS:
            limit = 1 << (limit - 1).bit_length()
        self.limits[limit] = self.limits.get(limit, 0) + 1

    def output_tokens(self, per_request: float, *, learned: bool = False) -> int:
        """Expected output tokens: a line's limit, else `per_request`. With `learned` (the
        template's history), `per_request` also caps each limit: a `max_tokens` is a ceiling
        replies rarely reach, what this template's replies averaged is the better guess."""
        limited = sum(
            (min(limit, per_request) if learned else limit) * count
            for limit, count in self.limits.items()
        )
        return round(limited + self.unlimited_requests * per_request)
