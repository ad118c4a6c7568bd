"""Liveness, readiness and Prometheus metrics; outside /api, so probes need no key."""

from __future__ import annotations

import msgspec
from litestar import Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST

from neobatch.common.runtime import ServiceRuntime
from neobatch.console.errors import ErrorBody, error_response


class Healthy(msgspec.Struct, kw_only=True):
    status: str = "ok"


class Ready(msgspec.Struct, kw_only=True):
    status: str = "ok"
    checks: dict[str, bool]


@get("/healthz", sync_to_thread=False)
def healthz() -> Healthy:
    return Healthy()


@get("/readyz")
async def readyz(state: State) -> Response[Ready | ErrorBody]:
    """Ready when NATS is connected, MongoDB answers a ping and the relay's consumers run."""
    runtime: ServiceRuntime = state.runtime
    checks = await runtime.readiness()
    if all(checks.values()):
        return Response(Ready(checks=checks))
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    return error_response(503, "unavailable", f"not ready: {failing}")


@get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response[bytes]:
    runtime: ServiceRuntime = state.runtime
    body = await runtime.render_metrics()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
