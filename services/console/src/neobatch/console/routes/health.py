"""Liveness, readiness and Prometheus metrics; outside /api, so probes need no key."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST

from neobatch.common.runtime import ServiceRuntime
from neobatch.console.errors import error_response


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(state: State) -> Response[object]:
    """Ready when NATS is connected, MongoDB answers a ping and the relay's consumers run."""
    runtime: ServiceRuntime = state.runtime
    checks = await runtime.readiness()
    if all(checks.values()):
        return Response({"status": "ok", "checks": checks})
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    return error_response(503, "unavailable", f"not ready: {failing}")


@get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response[bytes]:
    runtime: ServiceRuntime = state.runtime
    body = await runtime.render_metrics()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
