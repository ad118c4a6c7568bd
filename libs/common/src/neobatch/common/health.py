"""/healthz, /readyz and /metrics for services without an HTTP API of their own.

`ServiceRuntime` starts a `HealthServer` on `NEOBATCH_HEALTH_HOST:NEOBATCH_HEALTH_PORT` (port 0
= none). The console serves the same three paths from its Litestar app using the same
`ServiceRuntime.readiness()` and `ServiceRuntime.render_metrics()`.

- /healthz: 200 while the process runs its event loop (liveness: restart only if this fails).
- /readyz: 200 when NATS is connected, MongoDB answers a ping and the durable consumers are
  bound; 503 with the failing checks otherwise (readiness: take out of rotation).
- /metrics: Prometheus text format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from neobatch.common.logs import log_fields

log = logging.getLogger("neobatch.health")

Readiness = Callable[[], Awaitable[Mapping[str, bool]]]
RenderMetrics = Callable[[], Awaitable[bytes]]


class HealthServer:
    def __init__(
        self, host: str, port: int, readiness: Readiness, render_metrics: RenderMetrics
    ) -> None:
        self.host = host
        self.port = port
        self._readiness = readiness
        self._render_metrics = render_metrics
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        log.info("health endpoints listening", extra=log_fields(host=self.host, port=self.port))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        checks = dict(await self._readiness())
        ready = all(checks.values())
        body = {"status": "ok" if ready else "unavailable", "checks": checks}
        return web.Response(
            status=200 if ready else 503, text=json.dumps(body), content_type="application/json"
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = await self._render_metrics()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
