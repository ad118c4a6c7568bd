"""The engine's load, read from its Prometheus `/metrics` through the tunnel.

vLLM serves `/metrics` on the API's own port, so the SSH forward that carries requests carries
this too. A probe at the start of dispatch decides the controller: a parseable answer with
vLLM's running/waiting gauges → `EngineLoadController`; anything else (404, another OpenAI
server, no answer) → AIMD. While dispatching, `feed` samples it every `POLL_SECONDS` on a
connection of its own (never one of the requests'): each poll has a deadline and a bounded
body. A failed poll keeps the last state; `STALE_POLLS` failures in a row hand the controller
to AIMD. Nothing here fails the batch.
"""

from __future__ import annotations

import logging

from neobatch.common.aio import pause
from neobatch.common.logs import log_fields
from neobatch.runtime_agent.dispatch.engine_load import (
    EngineLoad,
    EngineLoadController,
    parse_engine_load,
)
from neobatch.runtime_agent.engine.http import EngineConnectionError, EngineHTTP
from neobatch.runtime_agent.engine.limits import EngineResponseTooLarge

log = logging.getLogger("neobatch.runtime_agent.engine.metrics")

METRICS_PATH = "/metrics"
# vLLM's exposition is some tens of KB (histograms per model); far more is not a vLLM.
MAX_METRICS_BYTES = 2 * 1024 * 1024
# vLLM renders /metrics on its API server's event loop: a poll every half second costs it
# little, and the queue it steers drains in well over that.
POLL_SECONDS = 0.5
POLL_TIMEOUT_SECONDS = 2.0
STALE_POLLS = 10


class EngineMetrics:
    """Reads one engine's load gauges."""

    def __init__(self, base_url: str, *, timeout_seconds: float = POLL_TIMEOUT_SECONDS) -> None:
        self._http = EngineHTTP(base_url, max_connections=1, max_body_bytes=MAX_METRICS_BYTES)
        self._timeout = timeout_seconds
        self.polls = 0
        self.failed_polls = 0

    async def read(self) -> EngineLoad | None:
        """One sample; None when the engine has no (vLLM) metrics or did not answer in time."""
        self.polls += 1
        try:
            response = await self._http.request("GET", METRICS_PATH, timeout_seconds=self._timeout)
        except (EngineConnectionError, EngineResponseTooLarge, TimeoutError):
            load = None
        else:
            load = None
            if response.status == 200:
                load = parse_engine_load(response.body.decode("utf-8", errors="replace"))
        if load is None:
            self.failed_polls += 1
        return load

    async def feed(
        self,
        controller: EngineLoadController,
        *,
        interval_seconds: float = POLL_SECONDS,
        stale_polls: int = STALE_POLLS,
        ids: dict[str, str] | None = None,
    ) -> None:
        """Sample every `interval_seconds` into `controller` until cancelled."""
        failures = 0
        while True:
            await pause(interval_seconds)
            load = await self.read()
            if load is not None:
                failures = 0
                controller.observe(load)
                continue
            failures += 1
            if failures == stale_polls:
                controller.degrade()
                log.warning(
                    "engine metrics stopped answering; AIMD from here",
                    extra=log_fields(**(ids or {}), failed_polls=failures, limit=controller.limit),
                )
                return

    async def close(self) -> None:
        await self._http.close()
