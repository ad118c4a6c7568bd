"""Composition root: settings → ServiceRuntime (Mongo, broker, outbox relay) → Litestar app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig

from neobatch.common.clock import Clock
from neobatch.common.runtime import ServiceRuntime
from neobatch.console.auth import require_api_key
from neobatch.console.deps import DEPENDENCIES
from neobatch.console.errors import EXCEPTION_HANDLERS
from neobatch.console.routes.files import file_router
from neobatch.console.routes.health import healthz, readyz
from neobatch.console.routes.jobs import JobController
from neobatch.console.routes.models import ModelController
from neobatch.console.settings import ConsoleSettings
from neobatch.console.store import ConsoleStore

SERVICE = "console"


def create_app(settings: ConsoleSettings, *, clock: Clock | None = None) -> Litestar:
    """The console app; connections are made in its lifespan, not here (no import effects)."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = ServiceRuntime(SERVICE, settings.common, clock=clock)
        store = ConsoleStore(runtime.mongo, runtime.db, runtime.ns, runtime.notify_outbox)
        try:
            await store.ensure_indexes()
            await runtime.start()
            app.state.runtime = runtime
            app.state.store = store
            yield
        finally:
            await runtime.stop()

    api = Router(
        path="/api/v1",
        guards=[require_api_key],
        route_handlers=[ModelController, JobController, file_router(settings.max_upload_bytes)],
    )
    return Litestar(
        route_handlers=[healthz, readyz, api],
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        # Settings are in state from the start: the auth guard reads them.
        state=State({"settings": settings}),
        # Logging is configured once by __main__ (JSON, redacted); Litestar's default config
        # would replace those handlers with its own plain-text ones.
        logging_config=None,
        openapi_config=OpenAPIConfig(title="neobatch console", version="0.1.0"),
    )
