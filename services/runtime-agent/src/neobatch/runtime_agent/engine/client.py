"""The inference engine's client: readiness, and one request with retries.

HTTP goes through `engine.http.EngineHTTP`, a lean keep-alive client (not httpx, not aiohttp:
on the dispatch hot path they cost about 30 and 5 times its CPU per request; see that module).
Every response is translated into a `RequestResult` here; nothing above sees HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from neobatch.common.batch_input import BatchRequest
from neobatch.common.errors import NeobatchError
from neobatch.common.logs import log_fields
from neobatch.runtime_agent.dispatch.concurrency import ConcurrencyLimit, FixedLimit, Outcome
from neobatch.runtime_agent.dispatch.engine_load import (
    EngineLoadController,
    max_num_seqs_from_args,
)
from neobatch.runtime_agent.dispatch.policy import (
    DEFAULT_CANCEL_GRACE_SECONDS,
    DEFAULT_MAX_RESPONSE_BYTES,
    RETRY_AFTER_STATUSES,
    DispatchConfig,
    RetryPolicy,
    parse_retry_after,
)
from neobatch.runtime_agent.dispatch.tally import RequestResult
from neobatch.runtime_agent.engine.http import EngineConnectionError, EngineHTTP
from neobatch.runtime_agent.engine.limits import EngineResponseTooLarge
from neobatch.runtime_agent.engine.metrics import EngineMetrics
from neobatch.runtime_agent.machine.launch import vllm_options

if TYPE_CHECKING:
    from neobatch.runtime_agent.batch.batches import Batch
    from neobatch.runtime_agent.settings import AgentSettings

log = logging.getLogger("neobatch.runtime_agent.engine.client")

# Error bodies that are not JSON are kept, truncated, inside an OpenAI-style error envelope.
_MAX_ERROR_TEXT = 1000


class EngineNotReady(NeobatchError):
    code = "engine_not_ready"


def request_id_for(batch_id: str, line_index: int) -> str:
    return f"{batch_id}-{line_index}"


def shape_body(body: dict[str, Any], served_model: str) -> dict[str, Any]:
    """The batch's engine serves one model: every request is addressed to it (as AIBrix does)."""
    if body.get("model") == served_model:
        return body
    return {**body, "model": served_model}


class _ModelOnly(msgspec.Struct):
    model: Any = None


_MODEL_ONLY = msgspec.json.Decoder(_ModelOnly)
_RAW = msgspec.json.Decoder(msgspec.Raw)


def encode_body(body: dict[str, Any] | msgspec.Raw, served_model: str) -> bytes:
    """The request body to send, addressed to `served_model` (see `shape_body`).

    A raw body (the dispatch pass) whose `model` already is the served one is sent as the
    input file has it; only one naming another model (or none) is decoded and re-encoded.
    """
    if isinstance(body, msgspec.Raw):
        if _MODEL_ONLY.decode(body).model == served_model:
            return bytes(body)
        body = msgspec.json.decode(body)
    return msgspec.json.encode(shape_body(body, served_model))


def is_json(raw: bytes) -> bool:
    """Whether `raw` is one JSON document, without building it (dicts, strings) in Python.

    Decoding as `msgspec.Raw` checks the grammar only; UTF-8 is checked apart (what a full
    decode also rejects). Unlike a full decode, a number too large for a float (1e999) is
    accepted: it is still valid JSON text.
    """
    try:
        _RAW.decode(raw)
        if not raw.isascii():
            raw.decode()
    except (msgspec.DecodeError, UnicodeDecodeError):
        return False
    return True


class EngineClient:
    """Talks to one engine at `base_url` (the local end of the SSH port-forward):
    `http://127.0.0.1:PORT` or `unix:/path/engine.sock`."""

    def __init__(
        self,
        base_url: str,
        *,
        batch_id: str,
        served_model: str,
        concurrency: int,
        request_timeout_seconds: float,
        retry: RetryPolicy,
        controller: ConcurrencyLimit | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        config: DispatchConfig | None = None,
    ) -> None:
        self._base_url = base_url
        # Set: the controller is picked once the engine is up (`watching_load`).
        self._config = config
        self._metrics: EngineMetrics | None = None
        self._batch_id = batch_id
        self._model = served_model
        self._retry = retry
        self.request_timeout_seconds = request_timeout_seconds
        # Fed every attempt's outcome; `dispatch_all` reads its limit.
        self.controller: ConcurrencyLimit = controller or FixedLimit(concurrency)
        # Set by the engine session: True once the SSH tunnel behind `base_url` closed, so a
        # transport error is not retried against a forward that no longer exists.
        self.tunnel_down: Callable[[], bool] = lambda: False
        # Set by the engine session: asked after a transport error, True once the engine
        # process is known to have exited (`EngineExitWatch`): the request is not the one that
        # failed, and waits for the relaunched engine instead of being retried.
        self.engine_exited: Callable[[], Awaitable[bool]] = _not_exited
        # Set by the engine session: called when a reply says the engine itself is dead
        # (`engine_dead_reply`): it is then known to have exited, whether or not its server
        # process still runs.
        self.engine_dead: Callable[[], None] = _nothing
        # One connection per concurrent request, kept alive: no connect per request.
        # Each response is cut off past `max_response_bytes`: memory per request stays bounded.
        self._http = EngineHTTP(
            base_url, max_connections=concurrency, max_body_bytes=max_response_bytes
        )

    @classmethod
    def for_batch(cls, base_url: str, batch: Batch, settings: AgentSettings) -> EngineClient:
        """A client driven by the job's `client` block, the agent's settings filling the gaps."""
        engine = batch.engine
        seqs = (
            max_num_seqs_from_args(vllm_options(engine)) if engine.engine_type == "vllm" else None
        )
        config = DispatchConfig.resolve(batch.client, settings.dispatch, seqs)
        return cls(
            base_url,
            batch_id=batch.id,
            served_model=engine.serving_name,
            concurrency=config.connections,
            request_timeout_seconds=config.request_timeout_seconds,
            retry=config.retry,
            controller=config.controller(),
            max_response_bytes=config.max_response_bytes,
            config=config,
        )

    @property
    def cancel_grace_seconds(self) -> float:
        """How long requests in flight may still answer once the batch is interrupted."""
        config = self._config
        return DEFAULT_CANCEL_GRACE_SECONDS if config is None else config.cancel_grace_seconds

    async def close(self) -> None:
        await self._http.close()
        if self._metrics is not None:
            await self._metrics.close()

    @contextlib.asynccontextmanager
    async def watching_load(self, ids: dict[str, str] | None = None) -> AsyncIterator[None]:
        """Around one dispatch pass: the controller fed with the engine's load.

        The first time, `/metrics` is probed once to pick the controller (the job's `client`
        block and the agent's settings allowing): the engine's own load gauges, or AIMD when
        it has none. Then, while the pass runs, it is sampled into an `EngineLoadController`.
        """
        config = self._config
        if config is None or not config.engine_aware:
            yield
            return
        if self._metrics is None:
            self._metrics = EngineMetrics(self._base_url)
            load = await self._metrics.read()
            self.controller = config.controller(engine_load=load is not None)
            if isinstance(self.controller, EngineLoadController) and load is not None:
                self.controller.observe(load)
            log.info(
                "concurrency controller chosen",
                extra=log_fields(
                    **(ids or {}),
                    controller=self.controller.name,
                    engine_metrics=load is not None,
                    limit=self.controller.limit,
                    maximum=self.controller.maximum,
                ),
            )
        controller = self.controller
        if not isinstance(controller, EngineLoadController) or controller.name != "engine_load":
            yield
            return
        feeding = asyncio.create_task(self._metrics.feed(controller, ids=ids), name="engine-load")
        try:
            yield
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)

    async def wait_ready(
        self,
        health_endpoint: str,
        timeout_seconds: float,
        *,
        still_starting: Callable[[], Awaitable[bool]] | None = None,
        poll_seconds: float = 0.2,
    ) -> None:
        """Poll `health_endpoint` until it answers 200, or raise EngineNotReady at the deadline.

        Polled every `poll_seconds` (0.2: a machine billed by the second should not idle half
        a second after its engine is up; a refused connect through the tunnel costs little).
        `still_starting` is asked between polls (every few seconds) so an engine that crashed
        at start fails the batch now rather than after the whole ready timeout.
        """
        path = "/" + health_endpoint.lstrip("/")
        deadline = time.monotonic() + timeout_seconds
        next_liveness = time.monotonic() + 5
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineNotReady(
                    f"engine not healthy at {health_endpoint} within {timeout_seconds:.0f}s"
                )
            try:
                health = await self._http.request("GET", path, timeout_seconds=min(10.0, remaining))
                if health.status == 200:
                    return
            except (EngineConnectionError, TimeoutError):
                pass  # Not listening yet, or the tunnel has no one to talk to.
            if still_starting is not None and time.monotonic() >= next_liveness:
                next_liveness = time.monotonic() + 5
                if not await still_starting():
                    raise EngineNotReady("engine process exited before it became healthy")
            await asyncio.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))

    async def send(self, request: BatchRequest) -> RequestResult:
        """POST one request, retrying overload and transient failures; never raises for HTTP."""
        request_id = request_id_for(self._batch_id, request.line_index)
        payload = encode_body(request.body, self._model)
        headers = (("Content-Type", "application/json"), ("X-Request-Id", request_id))
        http = self._http
        timeout = self.request_timeout_seconds
        attempts = 0
        error = ""
        while True:
            attempts += 1
            status: int | None = None
            timed_out = False
            retry_after: float | None = None
            started = time.monotonic()
            try:
                resp = await http.request(
                    "POST", request.url, body=payload, headers=headers, timeout_seconds=timeout
                )
                raw = resp.body
                status = resp.status
                reply_id = resp.header("X-Request-Id") or request_id
                if status in RETRY_AFTER_STATUSES:
                    retry_after = parse_retry_after(resp.header("Retry-After"), datetime.now(UTC))
            except TimeoutError:
                timed_out = True
                error = f"no answer within {timeout:g}s"
            except EngineResponseTooLarge as exc:
                # Not retried: the same request would generate as much again. The line fails
                # alone; the connection was closed without reading the rest.
                self.controller.record(Outcome(exc.status, time.monotonic() - started, False))
                return RequestResult(
                    line_index=request.line_index,
                    custom_id=request.custom_id,
                    request_id=request_id,
                    status_code=exc.status,
                    error_code="response_too_large",
                    error_message=str(exc),
                    attempts=attempts,
                )
            except EngineConnectionError as exc:
                error = str(exc)
            if status is not None and engine_dead_reply(status, raw):
                # Not this request's failure: the engine died under it. It waits for the
                # relaunched engine like a request whose connection the dead engine dropped.
                self.engine_dead()
                status, error = None, "the engine's core died (EngineDeadError)"
            self.controller.record(Outcome(status, time.monotonic() - started, timed_out))
            if status is None and (self.tunnel_down() or await self.engine_exited()):
                break  # The tunnel or engine died, not the request: the next pass sends it.
            if not self._retry.should_retry(attempts, status):
                break
            delay = self._retry.delay_seconds(attempts, random.uniform(0.5, 1.0), retry_after)
            await asyncio.sleep(delay)
        if status is None:
            return RequestResult(
                line_index=request.line_index,
                custom_id=request.custom_id,
                request_id=request_id,
                error_code="request_timeout" if timed_out else "request_failed",
                error_message=f"no response from the engine after {attempts} attempts ({error})",
                attempts=attempts,
            )
        return _result(request, status, reply_id, raw, attempts)


def _result(
    request: BatchRequest, status: int, request_id: str, raw: bytes, attempts: int
) -> RequestResult:
    if is_json(raw):  # Validate only: the raw bytes are what we keep.
        return RequestResult(
            line_index=request.line_index,
            custom_id=request.custom_id,
            request_id=request_id,
            attempts=attempts,
            status_code=status,
            body=raw,
        )
    base = {
        "line_index": request.line_index,
        "custom_id": request.custom_id,
        "request_id": request_id,
        "attempts": attempts,
    }
    if 200 <= status < 300:
        # A 2xx whose body is not JSON cannot go into an output line; it is an error.
        return RequestResult(
            **base,
            status_code=status,
            error_code="invalid_response",
            error_message="the engine answered with a body that is not JSON",
        )
    text = raw.decode(errors="replace")[:_MAX_ERROR_TEXT]
    envelope = {"error": {"message": text, "type": "engine_error", "code": status}}
    raw = msgspec.json.encode(envelope)
    return RequestResult(**base, status_code=status, body=raw)


# What vLLM answers every request with once its engine core died (`EngineDeadError`, V1, 0.6 to
# 0.32 at least: a 500 whose message is this) or, before V1, its background loop
# (`AsyncEngineDeadError`). Its server exits right after, unless VLLM_KEEP_ALIVE_ON_ENGINE_DEATH.
_ENGINE_DEAD_MARKS = (
    b"EngineCore encountered an issue",
    b"EngineDeadError",
    b"Background loop has errored already",
)
# An engine-dead reply is a short error envelope; a longer body is some request's own answer.
_ENGINE_DEAD_MAX_BYTES = 4096


def engine_dead_reply(status: int, raw: bytes) -> bool:
    """Whether an answer says the engine itself died (not that this request failed)."""
    return (
        status >= 500
        and len(raw) <= _ENGINE_DEAD_MAX_BYTES
        and any(mark in raw for mark in _ENGINE_DEAD_MARKS)
    )


async def _not_exited() -> bool:
    return False


def _nothing() -> None:
    return None
