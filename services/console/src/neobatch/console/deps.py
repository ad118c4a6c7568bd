"""Dependencies the route handlers ask for by name (`NamedDependency[...]`).

The stores are built in the app's lifespan and kept in its state; settings and the rate
limiter are there from the start (guards read them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import Provide

from neobatch.common.budget_store import BudgetStore
from neobatch.common.clock import Clock
from neobatch.console.catalog.store import CatalogStore
from neobatch.console.files.store import FileStore
from neobatch.console.jobs.retry import RetryService
from neobatch.console.jobs.service import JobService
from neobatch.console.jobs.store import JobStore
from neobatch.console.keys.auth import Caller
from neobatch.console.keys.store import KeyStore
from neobatch.console.quotas import QuotaStore
from neobatch.console.settings import ConsoleSettings
from neobatch.console.webhooks.store import WebhookStore


def provide_job_store(state: State) -> JobStore:
    return state.job_store


def provide_file_store(state: State) -> FileStore:
    return state.file_store


def provide_catalog_store(state: State) -> CatalogStore:
    return state.catalog_store


def provide_key_store(state: State) -> KeyStore:
    return state.key_store


def provide_quota_store(state: State) -> QuotaStore:
    return state.quota_store


def provide_webhook_store(state: State) -> WebhookStore:
    return state.webhook_store


def provide_budget_store(state: State) -> BudgetStore:
    return state.budget_store


def provide_job_service(state: State) -> JobService:
    return state.job_service


def provide_retry_service(state: State) -> RetryService:
    return state.retry_service


def provide_settings(state: State) -> ConsoleSettings:
    return state.settings


def provide_now(state: State) -> datetime:
    """The request's time, from the runtime's clock (a fixed clock in tests)."""
    clock: Clock = state.runtime.clock
    return clock.now()


def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    """The caller the auth guard found (its key id and project)."""
    return request.state.caller


DEPENDENCIES = {
    "job_store": Provide(provide_job_store, sync_to_thread=False),
    "retry_service": Provide(provide_retry_service, sync_to_thread=False),
    "file_store": Provide(provide_file_store, sync_to_thread=False),
    "catalog_store": Provide(provide_catalog_store, sync_to_thread=False),
    "key_store": Provide(provide_key_store, sync_to_thread=False),
    "quota_store": Provide(provide_quota_store, sync_to_thread=False),
    "webhook_store": Provide(provide_webhook_store, sync_to_thread=False),
    "budget_store": Provide(provide_budget_store, sync_to_thread=False),
    "job_service": Provide(provide_job_service, sync_to_thread=False),
    "settings": Provide(provide_settings, sync_to_thread=False),
    "now": Provide(provide_now, sync_to_thread=False),
    "caller": Provide(provide_caller, sync_to_thread=False),
}
