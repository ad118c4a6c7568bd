"""Engine-aware concurrency as tables: the vLLM /metrics parser, `--max-num-seqs` from the
launch, the job's `client` block over the engine's defaults, and EngineLoadController fed
samples and outcomes (queue depth, not latency, moves it)."""

from __future__ import annotations

import pytest

from neobatch.common.contracts import ClientSpec
from neobatch.runtime_agent.dispatch.concurrency import AimdController, FixedLimit, Outcome
from neobatch.runtime_agent.dispatch.engine_load import (
    EngineLoad,
    EngineLoadController,
    engine_maximum,
    max_num_seqs_from_args,
    parse_engine_load,
)
from neobatch.runtime_agent.dispatch.policy import DispatchConfig, DispatchDefaults

# Shaped as vLLM 0.32's /metrics (names, labels, HELP/TYPE lines, counters with _created).
VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 128.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 17.0
# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 17.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="tiny"} 3.0
vllm:num_preemptions_created{engine="0",model_name="tiny"} 1.7e+09
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="tiny"} 5.0
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VLLM_METRICS, EngineLoad(running=128, waiting=17, kv_cache_usage=0.25, preemptions=3)),
        # Two engine cores (data parallel): running and waiting add up, KV use is the fullest.
        (
            'vllm:num_requests_running{engine="0"} 10\nvllm:num_requests_running{engine="1"} 5\n'
            'vllm:num_requests_waiting{engine="0"} 1\nvllm:num_requests_waiting{engine="1"} 2\n'
            'vllm:kv_cache_usage_perc{engine="0"} 0.5\nvllm:kv_cache_usage_perc{engine="1"} 0.9\n',
            EngineLoad(running=15, waiting=3, kv_cache_usage=0.9),
        ),
        # An older vLLM: gpu_cache_usage_perc, no labels.
        (
            "vllm:num_requests_running 4\nvllm:num_requests_waiting 0\n"
            "vllm:gpu_cache_usage_perc 0.1\n",
            EngineLoad(running=4, waiting=0, kv_cache_usage=0.1),
        ),
        # Garbage, NaN and negative samples are skipped, not fatal.
        (
            "vllm:num_requests_running{ 7\nvllm:num_requests_running NaN\n"
            "vllm:num_requests_running -1\nvllm:num_requests_running 2 1700000000\n"
            'vllm:num_requests_waiting{model_name="a b}"} 1\n',
            EngineLoad(running=2, waiting=1),
        ),
        # Not a vLLM (the simulator without max_num_seqs, nginx, another server): no controller.
        ("neobatch_sim_requests_served_total 5\n", None),
        ("vllm:num_requests_running 3\n", None),
        ("<html>404 Not Found</html>", None),
        ("", None),
    ],
)
def test_parse_engine_load(text: str, expected: EngineLoad | None) -> None:
    assert parse_engine_load(text) == expected


def test_parse_reads_a_bounded_number_of_lines() -> None:
    text = "# filler\n" * 50 + "vllm:num_requests_running 1\nvllm:num_requests_waiting 1\n"
    assert parse_engine_load(text, max_lines=50) is None
    assert parse_engine_load(text, max_lines=60) == EngineLoad(running=1, waiting=1)


@pytest.mark.parametrize(
    ("argv", "seqs"),
    [
        (["--max-model-len", "512"], None),
        (["--max-num-seqs", "128"], 128),
        (["--max-num-seqs=64", "--dtype", "bfloat16"], 64),
        (["--max-num-seqs", "8", "--max-num-seqs", "32"], 32),  # argparse: the last wins
        (["--max-num-seqs", "0"], None),
        (["--max-num-seqs", "lots"], None),
        (["--max-num-seqs"], None),
    ],
)
def test_max_num_seqs_from_the_launch(argv: list[str], seqs: int | None) -> None:
    assert max_num_seqs_from_args(argv) == seqs


def test_the_engine_sets_the_default_maximum_not_the_agent_setting() -> None:
    defaults = DispatchDefaults()  # NEOBATCH_DISPATCH_CONCURRENCY = 64
    config = DispatchConfig.resolve(ClientSpec(), defaults, max_num_seqs=128)
    engine = config.controller(engine_load=True)
    assert isinstance(engine, EngineLoadController)
    assert engine.maximum == 256 and engine.limit > 128 and engine.name == "engine_load"
    assert config.connections == 256
    # Unknown max sequences (vLLM's default depends on the GPU): up to the 1024 cap, held
    # near what the engine runs by the queue target.
    unknown = DispatchConfig.resolve(ClientSpec(), defaults).controller(engine_load=True)
    assert unknown.maximum == engine_maximum(None) == 1024
    # No metrics: AIMD from 8 to the agent's setting, as before.
    aimd = config.controller(engine_load=False)
    assert isinstance(aimd, AimdController) and (aimd.limit, aimd.maximum) == (8, 64)


@pytest.mark.parametrize(
    ("client", "settings", "kind", "maximum"),
    [
        (ClientSpec(max_concurrency=300), {}, EngineLoadController, 300),
        (ClientSpec(max_concurrency=100, adaptive_concurrency=False), {}, FixedLimit, 100),
        (ClientSpec(adaptive_concurrency=False), {}, FixedLimit, 64),
        (ClientSpec(), {"adaptive": False}, FixedLimit, 64),
        (ClientSpec(), {"engine_metrics": False}, AimdController, 64),
        (ClientSpec(adaptive_concurrency=True), {"adaptive": False}, EngineLoadController, 256),
    ],
)
def test_the_job_client_block_still_wins(
    client: ClientSpec, settings: dict[str, object], kind: type, maximum: int
) -> None:
    defaults = DispatchDefaults(**settings)  # type: ignore[arg-type]
    controller = DispatchConfig.resolve(client, defaults, 128).controller(engine_load=True)
    assert isinstance(controller, kind) and controller.maximum == maximum


def load(running: float, waiting: float, kv: float | None = None, pre: float | None = None):
    return EngineLoad(running=running, waiting=waiting, kv_cache_usage=kv, preemptions=pre)


def test_starts_with_the_batch_full_and_a_queue() -> None:
    c = EngineLoadController(capacity=128, maximum=256, target_waiting=16)
    assert c.limit == 144  # not AIMD's 8


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (load(128, 0), 180),  # queue ran dry: the engine has room, + a quarter (probe)
        (load(128, 4), 150),  # + half the gap to the target
        (load(128, 8), 148),
        (load(128, 16), 144),  # on target: unchanged
        (load(128, 40), 132),  # queue too long: - half the excess
        (load(100, 80), 112),  # the KV cache admits fewer: the excess goes
    ],
)
def test_the_queue_at_the_engine_moves_the_limit(sample: EngineLoad, expected: int) -> None:
    c = EngineLoadController(capacity=128, maximum=256, target_waiting=16)
    c.observe(sample)
    assert c.limit == expected


def test_converges_on_a_small_non_empty_queue() -> None:
    """A model engine: runs min(in flight, 128), queues the rest; a few in transit."""
    c = EngineLoadController(capacity=128, maximum=512, target_waiting=16)
    for _ in range(30):
        in_engine = c.limit - 4
        c.observe(load(min(in_engine, 128), max(0, in_engine - 128)))
    assert c.limit == 128 + 16 + 4
    assert c.peak <= 512


def test_a_limit_nobody_fills_is_not_raised() -> None:
    c = EngineLoadController(capacity=64, maximum=1024, target_waiting=8)
    for _ in range(50):
        c.observe(load(3, 0))  # the input ran out: 3 left, nothing waits
    assert c.limit == 72  # where it started: not raised towards 1024
    c.observe(load(64, 0))
    assert c.limit == 90  # the engine holds what we send: grows again


def test_latency_is_not_a_signal() -> None:
    c = EngineLoadController(capacity=128, maximum=256, target_waiting=16)
    for latency in (0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 5.0, 9.0, 30.0):
        c.record(Outcome(200, latency))
    assert c.limit == 144 and c.decreases == 0


@pytest.mark.parametrize(
    "outcome", [Outcome(429, 0.01), Outcome(503, 0.01), Outcome(None, 600, timed_out=True)]
)
def test_overload_answers_back_off_once_per_round_and_hold(outcome: Outcome) -> None:
    c = EngineLoadController(capacity=128, maximum=256, target_waiting=16)
    for _ in range(50):  # a burst of in-flight requests failing together: one signal
        c.record(outcome)
    assert c.limit == 100 and c.decreases == 1  # floor(144 x 0.7)
    c.observe(load(90, 0))
    c.observe(load(90, 0))
    assert c.limit == 100  # held two samples
    c.observe(load(90, 0))
    assert c.limit == 125
    for _ in range(100):  # a full round later, a new overload counts again
        c.record(outcome)
    assert c.decreases == 2


@pytest.mark.parametrize(
    ("samples", "decreases"),
    [
        ([load(128, 16, kv=0.99, pre=5), load(128, 16, kv=0.99, pre=9)], 1),  # full, preempting
        ([load(128, 16, kv=0.99, pre=5), load(128, 16, kv=0.99, pre=5)], 0),  # full, steady
        ([load(128, 16, kv=0.5, pre=5), load(128, 16, kv=0.5, pre=9)], 0),  # preempts, room
        ([load(128, 16, kv=1.0), load(128, 16, kv=1.0)], 0),  # no preemption counter
    ],
)
def test_a_full_kv_cache_is_overload_only_while_preempting(
    samples: list[EngineLoad], decreases: int
) -> None:
    c = EngineLoadController(capacity=128, maximum=256, target_waiting=16)
    for sample in samples:
        c.observe(sample)
    assert c.decreases == decreases


def test_learns_what_the_engine_really_runs() -> None:
    c = EngineLoadController(capacity=256, maximum=1024)  # launched without --max-num-seqs
    assert c.target_waiting == 64
    c.observe(load(128, 300))  # a CPU build: 128 run, the rest wait
    assert c.capacity == 128 and c.target_waiting == 32
    assert c.limit < 256 + 64


def test_degrades_to_aimd_from_its_limit() -> None:
    c = EngineLoadController(capacity=128, maximum=256, target_waiting=16)
    c.degrade()
    assert c.name == "engine_load->aimd" and c.limit == 144
    c.observe(load(0, 100))  # ignored from now on
    assert c.limit == 144
    c.record(Outcome(503, 0.01))
    assert c.limit == 100


def test_lines_split_on_newline_only() -> None:
    """Prometheus text separates samples with "\\n" alone: a label value holding U+2028 (or
    U+0085, \\v, \\f) is part of its line, never a sample of its own."""
    text = (
        'vllm:num_requests_running{model_name="a\u2028vllm:num_requests_waiting 999"} 3\n'
        'vllm:num_requests_waiting{model_name="b\x85vllm:num_requests_running 500"} 1\n'
    )
    assert parse_engine_load(text) == EngineLoad(running=3, waiting=1)
