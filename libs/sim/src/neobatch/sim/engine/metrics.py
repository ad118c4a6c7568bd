"""The simulator's /metrics: its own counters, and with `max_num_seqs` vLLM's load gauges."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neobatch.sim.engine.app import _EngineState as EngineState


def render_metrics(state: EngineState) -> str:
    """Prometheus text format; a few vLLM-named series so scrapers written for vLLM work too."""
    served = sum(n for (_, status), n in state.responses.items() if status == 200)
    failed = sum(n for (_, status), n in state.responses.items() if status != 200)
    lines = [
        "# HELP neobatch_sim_requests_total Requests answered, by path and HTTP status.",
        "# TYPE neobatch_sim_requests_total counter",
    ]
    for (path, status), count in sorted(state.responses.items()):
        lines.append(f'neobatch_sim_requests_total{{path="{path}",status="{status}"}} {count}')
    lines += [
        "# HELP neobatch_sim_requests_served_total Requests answered with 200.",
        "# TYPE neobatch_sim_requests_served_total counter",
        f"neobatch_sim_requests_served_total {served}",
        "# HELP neobatch_sim_requests_failed_total Requests answered with a non-200 status.",
        "# TYPE neobatch_sim_requests_failed_total counter",
        f"neobatch_sim_requests_failed_total {failed}",
        "# HELP neobatch_sim_injected_failures_total Requests failed by failure injection.",
        "# TYPE neobatch_sim_injected_failures_total counter",
        f"neobatch_sim_injected_failures_total {state.injected_failures}",
        "# HELP neobatch_sim_requests_in_flight Requests received and not yet answered.",
        "# TYPE neobatch_sim_requests_in_flight gauge",
        f"neobatch_sim_requests_in_flight {state.in_flight}",
        "# HELP neobatch_sim_peak_waiting Most requests that waited for a slot at once.",
        "# TYPE neobatch_sim_peak_waiting gauge",
        f"neobatch_sim_peak_waiting {state.peak_waiting}",
    ]
    if state.config.max_num_seqs is not None:
        lines += _vllm_lines(state)
    return "\n".join(lines) + "\n"


def _vllm_lines(state: EngineState) -> list[str]:
    """The gauges and counters a vLLM 0.32 server reports, named and labelled as it does."""
    seqs = state.config.max_num_seqs or 1
    labels = f'engine="0",model_name="{state.config.model}"'
    series = (
        (
            "num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            state.running,
        ),
        (
            "num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            state.waiting,
        ),
        (
            "kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            state.running / seqs,
        ),
        ("num_preemptions_total", "counter", "Cumulative number of preemption from the engine.", 0),
        (
            "prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            state.prompt_tokens,
        ),
        (
            "generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            state.completion_tokens,
        ),
    )
    lines = []
    for name, kind, doc, value in series:
        family = name.removesuffix("_total") if kind == "counter" else name
        lines += [
            f"# HELP vllm:{family} {doc}",
            f"# TYPE vllm:{family} {kind}",
            f"vllm:{name}{{{labels}}} {float(value)}",
        ]
    return lines
