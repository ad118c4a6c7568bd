"""aiohttp application for the engine simulator, plus in-process start/stop helpers.

Kept deliberately thin (no middlewares, no access log, msgspec for JSON) so one process answers
thousands of requests per second and the simulator is never the bottleneck of a dispatch test.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec
from aiohttp import web

from neobatch.sim.engine.metrics import render_metrics
from neobatch.sim.engine.oversize import is_oversize, send_oversize
from neobatch.sim.engine.prefix_cache import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CAPACITY_BLOCKS,
    PrefixCache,
    prompt_words,
)
from neobatch.sim.engine.replies import (
    API_PATHS,
    DEFAULT_MODEL,
    SimResponse,
    api_path,
    compute_response,
    error_body,
)
from neobatch.sim.engine.startup import ENGINE_DEAD_MESSAGE, die_serving, exit_now


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str = DEFAULT_MODEL
    latency_ms: float = 0.0
    failure_rate: float = 0.0
    seed: int = 0
    # /health (and the API) answer 503 this long after start, like vLLM loading weights.
    startup_delay_seconds: float = 0.0
    # "request": a request's body decides whether it fails, every time (a permanent failure).
    # "attempt": each attempt draws again, keyed by (seed, X-Request-Id, attempt number), so
    # a retry may succeed (a transient failure).
    failure_mode: str = "request"
    # Per attempt, keyed like failure_mode="attempt": answer 429 with `Retry-After`...
    status_429_rate: float = 0.0
    retry_after_seconds: float = 1.0
    # ...or sleep `hang_seconds` before answering normally (the client should time out).
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    # One JSON line per answered API request, written (and flushed) once the response is sent.
    request_log: str | None = None
    # Share of requests (chosen by a seeded hash of the request: `oversize.is_oversize`) that
    # a 200 answers with a body of `oversize_bytes`, sent with a Content-Length ("length") or
    # chunked ("chunked"): the response-size cap's attack.
    oversize_rate: float = 0.0
    oversize_bytes: int = 50 * 1024 * 1024
    oversize_transfer: str = "length"
    # vLLM's `--enable-prefix-caching` and `--enable-prompt-tokens-details`: a simulated prefix
    # cache (`prefix_cache`), its hits reported as `usage.prompt_tokens_details.cached_tokens`.
    prefix_caching: bool = False
    prompt_tokens_details: bool = False
    block_size: int = DEFAULT_BLOCK_SIZE
    cache_blocks: int = DEFAULT_CAPACITY_BLOCKS
    # vLLM-shaped capacity: at most this many requests "run" (pay `latency_ms`) at once, the
    # rest wait their turn in arrival order; /metrics then reports vLLM's load gauges
    # (running, waiting, KV-cache use, preemptions), as a real vLLM does. None: no limit and
    # no vLLM gauges (an OpenAI server that does not report its load).
    max_num_seqs: int | None = None
    # Crash like a dying vLLM once this many requests were answered: the next request makes
    # the process print `exit_error`'s traceback and exit 1 (`startup.exit_now`); with
    # `exit_once_file`, only the first engine started with that file does.
    exit_after: int | None = None
    exit_error: str = "RuntimeError: CUDA error: an illegal memory access was encountered"
    exit_once_file: str | None = None
    # "crash": exit at once; "dead": vLLM's engine core dying under a live API server (kept
    # alive as with VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1): every request from then on gets its
    # EngineDeadError 500 and /health 503, and the process stays up.
    exit_mode: str = "crash"


FAILURE_MODES = ("request", "attempt")


@dataclass(slots=True)
class _EngineState:
    config: EngineConfig
    started_at: float = field(default_factory=time.monotonic)
    responses: Counter[tuple[str, int]] = field(default_factory=Counter)
    injected_failures: int = 0
    in_flight: int = 0
    # With max_num_seqs: requests running (holding a sequence slot) and waiting for one.
    running: int = 0
    waiting: int = 0
    peak_waiting: int = 0
    slots: asyncio.Semaphore | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Attempts seen per request (X-Request-Id, else the body's hash).
    attempts: Counter[str] = field(default_factory=Counter)
    log_file: IO[str] | None = None
    cache: PrefixCache | None = None
    dead: bool = False  # `exit_mode` "dead" happened: the engine core is gone

    def ready(self) -> bool:
        return time.monotonic() - self.started_at >= self.config.startup_delay_seconds


def attempt_draw(seed: int, request_key: str, attempt: int) -> float:
    """A uniform [0, 1) draw for one attempt of one request: the same on every run."""
    digest = hashlib.sha256(f"attempt:{seed}:{request_key}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


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
    # vLLM: 503 with no body once its engine core is dead.
    return web.Response(status=503 if state.dead else 200, body=b"")


async def _models(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    if not state.ready():
        return _loading()
    model = {"id": state.config.model, "object": "model", "created": 0, "owned_by": "neobatch-sim"}
    return _json_response(200, {"object": "list", "data": [model]})


async def _api(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    path = api_path(request.path)
    request_id = request.headers.get("X-Request-Id", "")
    if not state.ready():
        state.responses[(path, 503)] += 1
        return await _answer(request, state, _loading(), request_id, 0)
    raw = await request.read()
    config = state.config
    if (
        config.exit_after is not None
        and not state.dead
        and sum(state.responses.values()) >= config.exit_after
    ):
        if config.exit_mode == "dead":
            state.dead = die_serving(config.exit_error, config.exit_once_file)
        else:
            exit_now(config.exit_error, config.exit_once_file)
    if state.dead:
        dead = error_body(ENGINE_DEAD_MESSAGE, "InternalServerError", 500)
        return await _answer(request, state, _json_response(500, dead), request_id, 0)
    key = request_id or hashlib.sha256(raw).hexdigest()
    state.attempts[key] += 1
    attempt = state.attempts[key]
    draw = attempt_draw(config.seed, key, attempt)
    hang = draw < config.hang_rate
    throttle = not hang and draw < config.hang_rate + config.status_429_rate
    transient = (
        config.failure_mode == "attempt"
        and not hang
        and not throttle
        and draw < config.hang_rate + config.status_429_rate + config.failure_rate
    )
    if throttle:
        response = SimResponse(429, error_body("simulated overload", "RateLimitError", 429))
        _record(state, path, response)
        reply = _json_response(response.status, response.body)
        reply.headers["Retry-After"] = f"{config.retry_after_seconds:g}"
        return await _answer(request, state, reply, request_id, attempt)
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        response = SimResponse(400, error_body("invalid JSON body", "BadRequestError", 400))
    else:
        response = compute_response(
            path,
            body,
            served_model=config.model,
            # In "attempt" mode the draw above decided; the body alone never fails.
            failure_rate=config.failure_rate if config.failure_mode == "request" else 0.0,
            seed=config.seed,
        )
        if transient and response.status == 200:
            response = SimResponse(
                500, error_body("simulated engine failure", "InternalServerError", 500)
            )
        if response.status == 200:
            _report_cached(state, body, response.body)
    # Client errors are rejected before "inference", so only 200/500 pay the latency.
    delay = config.latency_ms / 1000 if response.status in (200, 500) else 0.0
    if hang:
        delay = max(delay, config.hang_seconds)
    if delay > 0:
        state.in_flight += 1
        try:
            if state.slots is None:
                await asyncio.sleep(delay)
            else:
                await _run_in_slot(state, delay)
        finally:
            state.in_flight -= 1
    _record(state, path, response)
    if response.status == 200 and is_oversize(path, body, config.oversize_rate, config.seed):
        return await send_oversize(
            request, config.model, config.oversize_bytes, config.oversize_transfer
        )
    reply = _json_response(response.status, response.body)
    return await _answer(request, state, reply, request_id, attempt)


async def _run_in_slot(state: _EngineState, delay: float) -> None:
    """Wait for one of `max_num_seqs` slots (counted as waiting), then run `delay` in it: the
    time per request stays fixed whatever the load; what waits is queued, as in vLLM."""
    assert state.slots is not None
    state.waiting += 1
    state.peak_waiting = max(state.peak_waiting, state.waiting)
    try:
        await state.slots.acquire()
    finally:
        state.waiting -= 1
    state.running += 1
    try:
        await asyncio.sleep(delay)
    finally:
        state.running -= 1
        state.slots.release()


async def _answer(
    request: web.Request,
    state: _EngineState,
    reply: web.Response,
    request_id: str,
    attempt: int,
) -> web.StreamResponse:
    """Send `reply` now; then (request log on) append a line saying it was answered."""
    if state.log_file is None:
        return reply
    transport = request.transport
    delivered = transport is not None and not transport.is_closing()
    try:
        await reply.prepare(request)
        await reply.write_eof()
    except (ConnectionError, RuntimeError):
        delivered = False
    line = {
        "request_id": request_id,
        "attempt": attempt,
        "status": reply.status,
        "delivered": delivered,
        "finished_at": time.time(),
    }
    state.log_file.write(msgspec.json.encode(line).decode() + "\n")
    state.log_file.flush()  # the line is the OS's now: it survives any client's death
    return reply


def _report_cached(state: _EngineState, body: Any, reply: dict[str, Any]) -> None:
    """Look the prompt up in the prefix cache (when on) and report its hits like vLLM."""
    usage = reply.get("usage")
    if not isinstance(usage, dict) or "completion_tokens" not in usage:
        return  # embeddings: no prefix cache
    cached = 0
    if state.cache is not None and isinstance(body, dict):
        cached = state.cache.lookup_and_insert(prompt_words(body), usage["prompt_tokens"])
    if state.config.prompt_tokens_details:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}


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


def build_app(config: EngineConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    state = _EngineState(config or EngineConfig())
    if state.config.prefix_caching:
        state.cache = PrefixCache(state.config.block_size, state.config.cache_blocks)
    app[_STATE] = state

    async def _mark_started(_: web.Application) -> None:
        # Count the startup delay from when the server starts, not from when the app was built.
        state.started_at = time.monotonic()
        if state.config.max_num_seqs is not None:
            state.slots = asyncio.Semaphore(state.config.max_num_seqs)

    app.on_startup.append(_mark_started)
    if state.config.request_log:
        state.log_file = open(state.config.request_log, "a", encoding="utf-8")

        async def _close_log(_: web.Application) -> None:
            if state.log_file is not None:
                state.log_file.close()

        app.on_cleanup.append(_close_log)
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/metrics", _metrics)
    for path in API_PATHS:
        app.router.add_post(path, _api)
    return app
