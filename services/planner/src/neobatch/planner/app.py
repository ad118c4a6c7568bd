"""Composition root of the planner."""

from __future__ import annotations

from neobatch.common.runtime import ServiceRuntime
from neobatch.planner.handlers import SERVICE, JobEventHandler, register
from neobatch.planner.settings import PlannerSettings
from neobatch.planner.store import JobStore


def build(settings: PlannerSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(SERVICE, settings.common)
    store = JobStore(runtime.mongo, runtime.db, runtime.ns)
    handler = JobEventHandler(
        store, runtime.clock, runtime.notify_outbox, settings.provisioning_timeout_seconds
    )
    register(runtime.broker, runtime.ns, handler)
    return runtime
