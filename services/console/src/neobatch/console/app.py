"""Composition root: settings → ServiceRuntime (Mongo, broker, outbox relay) → one store per
feature → the Litestar app with the AIBrix (`/api/v1`) and OpenAI (`/v1`) surfaces."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import msgspec
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from neobatch.common.budget_store import BudgetStore
from neobatch.common.clock import Clock
from neobatch.common.errors import ConfigError
from neobatch.common.runtime import ServiceRuntime
from neobatch.common.throughput_store import ThroughputStore
from neobatch.console.admin.budget_routes import BudgetController
from neobatch.console.admin.routes import KeyController, QuotaController
from neobatch.console.bodies import check_json_body
from neobatch.console.catalog.routes import ModelController, list_offers
from neobatch.console.catalog.store import CatalogStore
from neobatch.console.deps import DEPENDENCIES
from neobatch.console.errors import EXCEPTION_HANDLERS
from neobatch.console.files.routes import aibrix_page_limit, file_router, openai_page_limit
from neobatch.console.files.store import FileStore
from neobatch.console.health import healthz, metrics, readyz
from neobatch.console.jobs.batch_routes import BatchController
from neobatch.console.jobs.retry import RetryService
from neobatch.console.jobs.routes import JobController, job_capabilities, job_events
from neobatch.console.jobs.service import JobService
from neobatch.console.jobs.store import JobStore
from neobatch.console.keys.auth import (
    DEV_KEY_ID,
    OPERATOR_KEY_ID,
    OPERATOR_ROLE,
    key_doc,
    rate_limited,
    require_api_key,
)
from neobatch.console.keys.ratelimit import RateLimiter
from neobatch.console.keys.store import KeyStore
from neobatch.console.openapi import document_errors
from neobatch.console.quotas import QuotaStore
from neobatch.console.settings import DEV_PROJECT, ConsoleSettings, configured_providers
from neobatch.console.ui.routes import ui_router
from neobatch.console.webhooks.routes import webhook_routes
from neobatch.console.webhooks.store import WebhookStore

SERVICE = "console"
SECURITY = [{"bearer": []}]
Lifespan = Callable[[Litestar], AbstractAsyncContextManager[None]]


def create_app(settings: ConsoleSettings, *, clock: Clock | None = None) -> Litestar:
    """The console app; connections are made in its lifespan, not here (no import effects)."""
    if settings.api_key and settings.api_key == settings.operator_api_key:
        raise ConfigError("NEOBATCH_API_KEY and NEOBATCH_OPERATOR_API_KEY must differ")
    aibrix = Router(
        path="/api/v1",
        guards=[require_api_key, rate_limited],
        security=SECURITY,
        tags=["aibrix"],
        route_handlers=[
            ModelController,
            JobController,
            QuotaController,
            BudgetController,
            KeyController,
            *webhook_routes(aibrix=True),
            job_capabilities,
            job_events,
            list_offers,
            file_router(
                upload_path="/files/upload",
                page_limit=aibrix_page_limit,
                max_upload_bytes=settings.max_upload_bytes,
            ),
        ],
    )
    openai = Router(
        path="/v1",
        guards=[require_api_key, rate_limited],
        security=SECURITY,
        tags=["openai"],
        route_handlers=[
            BatchController,
            *webhook_routes(aibrix=False),
            file_router(
                upload_path="/files",
                page_limit=openai_page_limit,
                max_upload_bytes=settings.max_upload_bytes,
            ),
        ],
    )
    # With a metrics port, /metrics is served there only (by the runtime's HealthServer).
    probes = [healthz, readyz] if settings.metrics_port else [healthz, readyz, metrics]
    app = Litestar(
        # The web console (`/ui/`): static pages that call the routes above with a bearer key.
        route_handlers=[*probes, aibrix, openai, ui_router()],
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        before_request=check_json_body,
        lifespan=[_lifespan(settings, clock)],
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
    document_errors(app)
    return app


def _runtime(settings: ConsoleSettings, clock: Clock | None) -> ServiceRuntime:
    """The console serves its probes on the API port; `/metrics` too unless it has a port of
    its own, which the runtime's HealthServer then serves (with the probes, as elsewhere)."""
    if not settings.metrics_port:
        return ServiceRuntime(SERVICE, settings.common, clock=clock, health_server=False)
    common = msgspec.structs.replace(settings.common, health_port=settings.metrics_port)
    return ServiceRuntime(SERVICE, common, clock=clock)


def _lifespan(settings: ConsoleSettings, clock: Clock | None) -> Lifespan:
    """Connect, build the stores (their indexes and the dev key are start-up steps), serve."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = _runtime(settings, clock)
        keys = KeyStore(runtime.db)
        files = FileStore(runtime.db, keys)
        catalog = CatalogStore(runtime.db)
        jobs = JobStore(runtime.mongo, runtime.db, runtime.ns, runtime.notify_outbox)
        webhooks = WebhookStore(runtime.db)
        for store in (keys, catalog, jobs, webhooks):
            runtime.add_startup(store.ensure_indexes)
        if settings.api_key or settings.operator_api_key:

            async def seed_dev_keys() -> None:
                now = runtime.clock.now()
                if settings.api_key:
                    dev = key_doc(DEV_KEY_ID, settings.api_key, DEV_PROJECT, "dev key", now)
                    await keys.seed_key(dev)
                if settings.operator_api_key:
                    operator = key_doc(
                        OPERATOR_KEY_ID,
                        settings.operator_api_key,
                        DEV_PROJECT,
                        "operator key",
                        now,
                        role=OPERATOR_ROLE,
                    )
                    await keys.seed_key(operator)

            runtime.add_startup(seed_dev_keys)
        # Litestar spools uploads with `tempfile`, which takes no directory: set the
        # process's temporary directory while the app runs (the console is one app per
        # process; tests restore it).
        previous_tempdir = tempfile.tempdir
        if settings.spool_dir:
            tempfile.tempdir = settings.spool_dir
        try:
            await runtime.start()
            app.state.runtime = runtime
            app.state.key_store = keys
            app.state.file_store = files
            app.state.catalog_store = catalog
            app.state.job_store = jobs
            app.state.webhook_store = webhooks
            app.state.quota_store = QuotaStore(runtime.db)
            app.state.budget_store = BudgetStore(runtime.db)
            app.state.job_service = JobService(
                jobs,
                files,
                catalog,
                default_template=settings.default_template,
                min_window_seconds=settings.min_completion_window_seconds,
                providers=configured_providers(settings.provisioner),
                quotas=app.state.quota_store,
                max_queued_jobs=settings.max_queued_jobs_per_project,
                max_line_bytes=settings.common.max_input_line_bytes,
                max_requests=settings.common.max_batch_requests,
                max_input_bytes=settings.common.max_batch_input_bytes,
                max_replicas=settings.max_replicas,
                throughput=ThroughputStore(runtime.db),
                budgets=app.state.budget_store,
            )
            app.state.retry_service = RetryService(
                jobs,
                files,
                app.state.job_service,
                max_upload_bytes=settings.max_upload_bytes,
                max_line_bytes=settings.common.max_input_line_bytes,
            )
            yield
        finally:
            tempfile.tempdir = previous_tempdir
            await runtime.stop()

    return lifespan
