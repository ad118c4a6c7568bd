"""Engine-aware concurrency: keep the engine's batch full and a few requests queued at it. Pure.

vLLM (and every continuous-batching engine) runs up to `max_num_seqs` sequences per step and
queues the rest; its `/metrics` says how many run and how many wait. The engine is busiest when
its batch is full and a new request is already waiting whenever one finishes: then each step
admits a replacement at once. So this controller steers the *queue at the engine* to a small,
non-empty target, fed by periodic metric samples (`observe`), and backs off only on real
overload: 429/503/timeouts (`record`), or a full KV cache while the engine preempts sequences.
Latency is not a signal here: on an engine that batches, latency rises with load by design.

Parsing the engine's Prometheus text is here too (`parse_engine_load`): bounded, and only the
few series the controller reads are kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from neobatch.runtime_agent.dispatch.concurrency import AimdController, Outcome

# vLLM's default `--max-num-seqs` for its OpenAI server on most GPUs (vLLM 0.32's
# `get_batch_defaults`: 256; 1024 on GPUs with 70 GiB or more but A100s; 128 x world size
# on its CPU build). vLLM's /metrics does not report it, so without a `--max-num-seqs` in the
# launch this is where the controller starts; it then learns what the engine really runs
# (what runs while requests wait).
VLLM_DEFAULT_MAX_NUM_SEQS = 256
# The default most requests in flight: this many times the engine's max sequences, so a full
# batch, the requests queued at the engine and those on the wire all fit.
ENGINE_MAXIMUM_FACTOR = 2
# ClientSpec's own bound on `max_concurrency`; also the maximum when the engine's max
# sequences are unknown (it may be a 1024-sequence GPU): the queue target, not this, then
# holds the limit near what the engine runs.
ENGINE_MAXIMUM_CAP = 1024
# Where the limit starts when the engine's max sequences are unknown (then it probes up).
UNKNOWN_CAPACITY_INITIAL = 64
# The growth per sample while nothing waits at the engine: this share of the limit.
PROBE_STEP = 0.25
# KV-cache use (0..1) from which preemptions count as overload.
KV_CACHE_FULL = 0.98


class EngineLoad(msgspec.Struct, frozen=True, kw_only=True):
    """One sample of the engine's own load gauges."""

    running: float
    waiting: float
    # Fraction of KV-cache blocks in use, 0..1; None when the engine does not say.
    kv_cache_usage: float | None = None
    # Total preemptions since the engine started (a counter); None when not exposed.
    preemptions: float | None = None


def max_num_seqs_from_args(argv: Sequence[str]) -> int | None:
    """The `--max-num-seqs` an engine is launched with (`--max-num-seqs N` or `=N`; the last
    one wins, as argparse does); None when absent or not a positive integer."""
    found: int | None = None
    for i, arg in enumerate(argv):
        value: str | None = None
        if arg == "--max-num-seqs" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--max-num-seqs="):
            value = arg.partition("=")[2]
        if value is not None:
            found = int(value) if value.strip().isdigit() and int(value) > 0 else None
    return found


def engine_maximum(max_num_seqs: int | None) -> int:
    """The default most requests in flight for an engine running `max_num_seqs` sequences."""
    if max_num_seqs is None:
        return ENGINE_MAXIMUM_CAP
    return max(1, min(ENGINE_MAXIMUM_CAP, ENGINE_MAXIMUM_FACTOR * max_num_seqs))


# --- the engine's /metrics ---------------------------------------------------------------------

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
# vLLM >= 0.9 says kv_cache_usage_perc; older builds gpu_cache_usage_perc (both 0..1).
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_PREEMPTIONS = "vllm:num_preemptions_total"
_WANTED = (_RUNNING, _WAITING, *_KV, _PREEMPTIONS)
# A sample line longer than this is not one of ours (label values are short).
_MAX_LINE = 4096


def parse_engine_load(text: str, max_lines: int = 100_000) -> EngineLoad | None:
    """The engine's load from its Prometheus text exposition; None unless it reports both
    running and waiting requests (then it is not an engine this controller understands).

    Series with several label sets (one per model or engine core) are summed, except KV-cache
    use, which takes the fullest. Lines that do not parse are skipped; at most `max_lines`
    lines are read (the caller bounds the body's bytes).
    """
    sums: dict[str, float] = {}
    kv: float | None = None
    # "\n" alone ends a line: str.splitlines() would also split inside a label value at
    # U+2028, U+0085, \v or \f, and could make a fake sample of what follows.
    for line in text.split("\n", max_lines)[:max_lines]:
        if not line.startswith(_WANTED) or len(line) > _MAX_LINE:
            continue
        name, value = _sample(line)
        if name is None or value is None:
            continue
        if name in _KV:
            kv = value if kv is None else max(kv, value)
        elif name in (_RUNNING, _WAITING, _PREEMPTIONS):
            sums[name] = sums.get(name, 0.0) + value
    if _RUNNING not in sums or _WAITING not in sums:
        return None
    return EngineLoad(
        running=sums[_RUNNING],
        waiting=sums[_WAITING],
        kv_cache_usage=kv,
        preemptions=sums.get(_PREEMPTIONS),
    )


def _sample(line: str) -> tuple[str | None, float | None]:
    """(metric name, value) of one sample line `name{labels} value [timestamp]`."""
    brace = line.find("{")
    if brace >= 0:
        name = line[:brace]
        close = line.rfind("}")
        if close < brace:
            return None, None
        rest = line[close + 1 :]
    else:
        name, _, rest = line.partition(" ")
    fields = rest.split()
    if not fields:
        return None, None
    try:
        value = float(fields[0])
    except ValueError:
        return None, None
    if not math.isfinite(value) or value < 0:
        return None, None
    return name.strip(), value


# --- the controller ----------------------------------------------------------------------------


class EngineLoadController:
    """Concurrency steered by the engine's queue (see the module doc). Pure: no clock.

    Starts at `initial`, by default `capacity + target_waiting` (the engine's batch full at
    once, not AIMD's 8). Each `observe` moves the limit by `gain` x (target_waiting - waiting):
    up while the queue at the engine runs dry (by at least a quarter of the limit while
    nothing waits), down while it grows past the target (the engine admits fewer than we
    thought: its KV cache, not max_num_seqs, is the bound). It never grows past what the
    engine holds plus `capacity` (a limit nobody fills is not raised), nor past `maximum`.
    A capacity error (429/503/504/408, a timeout) or a full KV cache with preemptions growing
    multiplies it by `backoff` (once per round of in-flight requests, as AIMD) and holds it
    for `hold_samples` samples. `degrade()` hands control to AIMD from the current limit: the
    engine's metrics stopped answering.
    """

    def __init__(
        self,
        *,
        capacity: int,
        maximum: int,
        target_waiting: int | None = None,
        initial: int | None = None,
        gain: float = 0.5,
        backoff: float = 0.7,
        hold_samples: int = 2,
    ) -> None:
        if capacity < 1 or maximum < 1:
            raise ValueError("capacity and maximum must be >= 1")
        self.capacity = capacity
        self.maximum = maximum
        self._fixed_target = target_waiting
        self.target_waiting = max(1, target_waiting or default_target_waiting(capacity))
        self.gain = gain
        self.backoff = backoff
        self.hold_samples = hold_samples
        start = capacity + self.target_waiting if initial is None else initial
        self._limit = max(1, min(maximum, start))
        self.peak = self._limit
        self.decreases = 0
        self.samples = 0
        self._hold = 0
        self._last_preemptions: float | None = None
        # Attempts since the last decrease; None before the first one.
        self._since_decrease: int | None = None
        self._aimd: AimdController | None = None

    @property
    def name(self) -> str:
        return "engine_load" if self._aimd is None else "engine_load->aimd"

    @property
    def limit(self) -> int:
        return self._limit if self._aimd is None else self._aimd.limit

    def degrade(self) -> None:
        """The engine's metrics are gone: AIMD from here on, starting at the current limit."""
        if self._aimd is None:
            self._aimd = AimdController(initial=self._limit, maximum=self.maximum)
            self._aimd.probing = False

    def record(self, outcome: Outcome) -> None:
        if self._aimd is not None:
            self._aimd.record(outcome)
            self.peak = max(self.peak, self._aimd.limit)
            return
        if self._since_decrease is not None:
            self._since_decrease += 1
        if outcome.capacity_error:
            self._decrease()

    def observe(self, load: EngineLoad) -> None:
        if self._aimd is not None:
            return
        self.samples += 1
        previous, self._last_preemptions = self._last_preemptions, load.preemptions
        preempting = (
            previous is not None and load.preemptions is not None and load.preemptions > previous
        )
        kv_full = load.kv_cache_usage is not None and load.kv_cache_usage >= KV_CACHE_FULL
        if kv_full and preempting:
            self._decrease()
            return
        if load.waiting >= 1 and load.running >= 1:
            # Requests wait: what runs is what the engine admits now (max_num_seqs, or fewer
            # when its KV cache is the bound).
            self.capacity = math.ceil(load.running)
            if self._fixed_target is None:
                self.target_waiting = default_target_waiting(self.capacity)
        if self._hold > 0:
            self._hold -= 1
            return
        error = self.target_waiting - load.waiting
        if error > 0:
            step = math.ceil(self.gain * error)
            if load.waiting < 1:
                # Nothing waits: the engine has room. Probe by a quarter, as AIMD does.
                step = max(step, math.ceil(self._limit * PROBE_STEP))
            ceiling = max(self._limit, math.ceil(load.running + load.waiting) + self.capacity)
            self._set(min(ceiling, self._limit + step))
        elif error < 0:
            self._set(self._limit - math.floor(self.gain * -error))

    def _decrease(self) -> None:
        if self._since_decrease is not None and self._since_decrease < self._limit:
            return  # the same burst: one decrease per round of in-flight requests
        self._since_decrease = 0
        self._hold = self.hold_samples
        lowered = max(1, min(self._limit - 1, math.floor(self._limit * self.backoff)))
        if lowered < self._limit:
            self._limit = lowered
            self.decreases += 1

    def _set(self, limit: int) -> None:
        self._limit = max(1, min(self.maximum, limit))
        self.peak = max(self.peak, self._limit)


def default_target_waiting(capacity: int) -> int:
    """Requests to keep queued at an engine running `capacity` sequences at most: enough that a
    finished sequence is replaced at the next step, few enough that they are not held there."""
    return max(4, capacity // 4)
