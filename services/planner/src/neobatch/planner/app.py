"""Composition root of the planner."""

from __future__ import annotations

from neobatch.common.budget_store import BudgetStore
from neobatch.common.runtime import ServiceRuntime
from neobatch.planner.handlers import SERVICE, register
from neobatch.planner.scheduler import Planner
from neobatch.planner.settings import PlannerSettings
from neobatch.planner.store import JobStore


def build(settings: PlannerSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(SERVICE, settings.common)
    store = JobStore(runtime.mongo, runtime.db, runtime.ns)
    planner = Planner(store, runtime.clock, runtime.notify_outbox, settings.limits)
    register(runtime.broker, runtime.ns, planner, settings.worker_count)

    async def prepare() -> None:
        await store.prepare(settings.max_concurrent_provisioning)

    runtime.add_startup(prepare)
    runtime.add_loop("job-queue", planner.run_queue)
    runtime.add_loop("deadlines", planner.run_deadlines)
    budgets = BudgetStore(runtime.db)
    runtime.add_loop("budgets", lambda: planner.run_budgets(budgets, settings.budget_check_seconds))
    return runtime
