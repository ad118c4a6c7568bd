"""Operator route (issue 16): a project's monthly budget.

`PUT /projects/{project}/budget` `{monthly_usd, stop_running_jobs}` sets it (`monthly_usd` null
removes it); `GET` answers it with what the project spent this month. Behind
`require_operator`, like the quotas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from msgspec import Meta

from neobatch.common.budget_store import BudgetStore, month_start
from neobatch.console.admin.routes import _project
from neobatch.console.keys.auth import require_operator
from neobatch.console.wire import unix_seconds


class ProjectBudget(msgspec.Struct, kw_only=True):
    """USD a project may spend per calendar month (UTC); null removes the budget. Over it, new
    jobs are refused (403 `project_over_budget`); running ones are stopped (`budget_exceeded`)
    only with `stop_running_jobs`."""

    monthly_usd: Annotated[float, Meta(ge=0, le=1_000_000_000)] | None = None
    stop_running_jobs: bool = False


class ProjectBudgetOut(msgspec.Struct, kw_only=True):
    project: str
    monthly_usd: float | None
    stop_running_jobs: bool
    month_start: int
    spent_usd: float
    over_budget: bool


async def _out(store: BudgetStore, project: str, now: datetime) -> ProjectBudgetOut:
    budget = await store.find_budget(project)
    start = month_start(now)
    spent = await store.find_month_spend(project, start, now)
    limit = budget.get("monthly_usd")
    return ProjectBudgetOut(
        project=project,
        monthly_usd=limit,
        stop_running_jobs=bool(budget.get("stop_running_jobs")),
        month_start=unix_seconds(start),
        spent_usd=spent,
        over_budget=limit is not None and spent >= limit,
    )


class BudgetController(Controller):
    path = "/projects/{project:str}/budget"
    guards = [require_operator]

    @get("/")
    async def get_budget(
        self,
        project: FromPath[str],
        budget_store: NamedDependency[BudgetStore],
        now: NamedDependency[datetime],
    ) -> ProjectBudgetOut:
        return await _out(budget_store, _project(project), now)

    @put("/")
    async def put_budget(
        self,
        project: FromPath[str],
        data: JSONBody[ProjectBudget],
        budget_store: NamedDependency[BudgetStore],
        now: NamedDependency[datetime],
    ) -> ProjectBudgetOut:
        await budget_store.save_budget(_project(project), data.monthly_usd, data.stop_running_jobs)
        return await _out(budget_store, project, now)
