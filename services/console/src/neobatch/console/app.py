"""Composition root: settings → ServiceRuntime (Mongo, broker, outbox relay) → Litestar app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from neobatch.common.clock import Clock
from neobatch.common.runtime import ServiceRuntime
from neobatch.console.auth import DEV_KEY_ID, key_doc, require_api_key
from neobatch.console.deps import DEPENDENCIES
from neobatch.console.errors import EXCEPTION_HANDLERS
from neobatch.console.ratelimit import RateLimiter
from neobatch.console.routes.batches import BatchController
from neobatch.console.routes.catalog import list_catalog
from neobatch.console.routes.files import FileController, OpenAIFileController, file_router
from neobatch.console.routes.health import healthz, metrics, readyz
from neobatch.console.routes.jobs import JobController, job_capabilities
from neobatch.console.routes.models import ModelController
from neobatch.console.settings import DEV_PROJECT, ConsoleSettings
from neobatch.console.store import ConsoleStore

SERVICE = "console"
SECURITY = [{"bearer": []}]


def create_app(settings: ConsoleSettings, *, clock: Clock | None = None) -> Litestar:
    """The console app; connections are made in its lifespan, not here (no import effects)."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = ServiceRuntime(SERVICE, settings.common, clock=clock, health_server=False)
        store = ConsoleStore(runtime.mongo, runtime.db, runtime.ns, runtime.notify_outbox)

        async def seed_dev_key() -> None:
            if settings.api_key:
                now = runtime.clock.now()
                await store.seed_api_key(
                    key_doc(DEV_KEY_ID, settings.api_key, DEV_PROJECT, "dev key", now)
                )

        runtime.add_startup(store.ensure_indexes)
        runtime.add_startup(seed_dev_key)
        try:
            await runtime.start()
            app.state.runtime = runtime
            app.state.store = store
            yield
        finally:
            await runtime.stop()

    aibrix = Router(
        path="/api/v1",
        guards=[require_api_key],
        security=SECURITY,
        tags=["aibrix"],
        route_handlers=[
            ModelController,
            JobController,
            job_capabilities,
            list_catalog,
            file_router(FileController, settings.max_upload_bytes),
        ],
    )
    openai = Router(
        path="/v1",
        guards=[require_api_key],
        security=SECURITY,
        tags=["openai"],
        route_handlers=[
            BatchController,
            file_router(OpenAIFileController, settings.max_upload_bytes),
        ],
    )
    return Litestar(
        route_handlers=[healthz, readyz, metrics, aibrix, openai],
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        # Settings and the rate limiter are in state from the start: guards read them.
        state=State({"settings": settings, "limiter": RateLimiter(settings.rate_limit_per_minute)}),
        # Logging is configured once by __main__ (JSON, redacted); Litestar's default config
        # would replace those handlers with its own plain-text ones.
        logging_config=None,
        openapi_config=OpenAPIConfig(
            title="neobatch console",
            version="0.1.0",
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", description="API key")
                }
            ),
        ),
    )
