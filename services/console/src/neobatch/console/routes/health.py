"""Liveness and readiness; outside /api, so probes need no key."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from neobatch.console.errors import error_response
from neobatch.console.store import ConsoleStore


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz")
async def readyz(store: NamedDependency[ConsoleStore]) -> Response[object]:
    if await store.ping():
        return Response({"status": "ok"})
    return error_response(503, "unavailable", "MongoDB does not answer a ping")
