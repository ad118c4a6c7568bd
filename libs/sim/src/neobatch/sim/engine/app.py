"""aiohttp application for the engine simulator, plus in-process start/stop helpers.

Kept deliberately thin (no middlewares, no access log, msgspec for JSON) so one process answers
thousands of requests per second and the simulator is never the bottleneck of a dispatch test.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
from aiohttp import web

from neobatch.sim.engine.replies import (
    API_PATHS,
    DEFAULT_MODEL,
    SimResponse,
    api_path,
    compute_response,
    error_body,
)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str = DEFAULT_MODEL
    latency_ms: float = 0.0
    failure_rate: float = 0.0
    seed: int = 0
    # /health (and the API) answer 503 this long after start, like vLLM loading weights.
    startup_delay_seconds: float = 0.0


@dataclass(slots=True)
class _EngineState:
    config: EngineConfig
    started_at: float = field(default_factory=time.monotonic)
    responses: Counter[tuple[str, int]] = field(default_factory=Counter)
    injected_failures: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def ready(self) -> bool:
        return time.monotonic() - self.started_at >= self.config.startup_delay_seconds


_STATE = web.AppKey("engine_state", _EngineState)
_JSON = "application/json"


def _json_response(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(body), content_type=_JSON)


def _loading() -> web.Response:
    return _json_response(503, error_body("model is loading", "ServiceUnavailableError", 503))


async def _health(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    if not state.ready():
        return _loading()
    return web.Response(status=200, body=b"")


async def _models(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    if not state.ready():
        return _loading()
    model = {"id": state.config.model, "object": "model", "created": 0, "owned_by": "neobatch-sim"}
    return _json_response(200, {"object": "list", "data": [model]})


async def _api(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    path = api_path(request.path)
    if not state.ready():
        state.responses[(path, 503)] += 1
        return _loading()
    raw = await request.read()
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        response = SimResponse(400, error_body("invalid JSON body", "BadRequestError", 400))
    else:
        config = state.config
        response = compute_response(
            path,
            body,
            served_model=config.model,
            failure_rate=config.failure_rate,
            seed=config.seed,
        )
    # Client errors are rejected before "inference", so only 200/500 pay the latency.
    if response.status in (200, 500) and state.config.latency_ms > 0:
        state.in_flight += 1
        try:
            await asyncio.sleep(state.config.latency_ms / 1000)
        finally:
            state.in_flight -= 1
    _record(state, path, response)
    return _json_response(response.status, response.body)


def _record(state: _EngineState, path: str, response: SimResponse) -> None:
    state.responses[(path, response.status)] += 1
    if response.status == 500:
        state.injected_failures += 1
    usage = response.body.get("usage") if response.status == 200 else None
    if usage:
        state.prompt_tokens += usage.get("prompt_tokens", 0)
        state.completion_tokens += usage.get("completion_tokens", 0)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(text=render_metrics(request.app[_STATE]), content_type="text/plain")


def render_metrics(state: _EngineState) -> str:
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
        "# HELP vllm:num_requests_running Requests currently being processed.",
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{model_name="{state.config.model}"}} {state.in_flight}',
        "# HELP vllm:num_requests_waiting Requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f'vllm:num_requests_waiting{{model_name="{state.config.model}"}} 0',
        "# HELP vllm:prompt_tokens_total Prompt tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f'vllm:prompt_tokens_total{{model_name="{state.config.model}"}} {state.prompt_tokens}',
        "# HELP vllm:generation_tokens_total Generation tokens produced.",
        "# TYPE vllm:generation_tokens_total counter",
        f'vllm:generation_tokens_total{{model_name="{state.config.model}"}} '
        f"{state.completion_tokens}",
    ]
    return "\n".join(lines) + "\n"


def build_app(config: EngineConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    state = _EngineState(config or EngineConfig())
    app[_STATE] = state

    async def _mark_started(_: web.Application) -> None:
        # Count the startup delay from when the server starts, not from when the app was built.
        state.started_at = time.monotonic()

    app.on_startup.append(_mark_started)
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/metrics", _metrics)
    for path in API_PATHS:
        app.router.add_post(path, _api)
    return app


@dataclass(slots=True)
class RunningEngine:
    """An engine simulator serving inside the current event loop."""

    host: str
    port: int
    config: EngineConfig
    _runner: web.AppRunner

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def url(self) -> str:
        """Base URL without ``/v1`` (``url + "/v1/chat/completions"``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-client style base URL, ending in ``/v1``."""
        return self.url + "/v1"

    async def stop(self) -> None:
        await self._runner.cleanup()


def make_config(config: EngineConfig | None = None, **opts: Any) -> EngineConfig:
    """Apply keyword overrides (model, latency_ms, failure_rate, seed, startup_delay_seconds)."""
    return replace(config or EngineConfig(), **opts)


async def start_engine(
    host: str = "127.0.0.1", port: int = 0, config: EngineConfig | None = None, **opts: Any
) -> RunningEngine:
    """Start serving in the running loop; ``port=0`` picks a free port (see ``.port``)."""
    config = make_config(config, **opts)
    runner = web.AppRunner(build_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    return RunningEngine(host=host, port=bound_port, config=config, _runner=runner)


@asynccontextmanager
async def running_engine(
    host: str = "127.0.0.1", port: int = 0, config: EngineConfig | None = None, **opts: Any
) -> AsyncIterator[RunningEngine]:
    engine = await start_engine(host, port, config, **opts)
    try:
        yield engine
    finally:
        await engine.stop()


async def run_engine(
    host: str = "127.0.0.1", port: int = 8000, config: EngineConfig | None = None, **opts: Any
) -> None:
    """Serve until cancelled."""
    async with running_engine(host, port, config, **opts):
        await asyncio.Event().wait()
