"""Dependencies the route handlers ask for by name (`NamedDependency[...]`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import Provide

from neobatch.common.clock import Clock
from neobatch.console.auth import Caller
from neobatch.console.settings import ConsoleSettings
from neobatch.console.store import ConsoleStore


def provide_store(state: State) -> ConsoleStore:
    return state.store


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
    "store": Provide(provide_store, sync_to_thread=False),
    "settings": Provide(provide_settings, sync_to_thread=False),
    "now": Provide(provide_now, sync_to_thread=False),
    "caller": Provide(provide_caller, sync_to_thread=False),
}
