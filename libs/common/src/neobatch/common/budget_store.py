"""BudgetStore: `project_budgets`, a project's monthly budget set by an operator (issue 16), and
what the project spent this month (read from `jobs` and the resource-manager's `provisions`).
The console writes budgets and reads them at job creation; the planner reads them.

A document `{_id: project, monthly_usd, stop_running_jobs}`. The console refuses a new job of a
project whose spend this month reached `monthly_usd` (403 `project_over_budget`); the planner
stops the project's running jobs as well only when `stop_running_jobs` is set.

The month's spend: the bills (`common.billing`, as the job view bills) of every machine of the
project's jobs created since the start of the current UTC month, held machines up to now. A job
counts in the month it was created in (a job that straddles two months is billed to the
first). Reading it walks the month's jobs in pages; it runs only for projects with a budget.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.billing import month_start, spend_of

__all__ = ["PROJECT_BUDGETS", "BudgetStore", "month_start"]

Document = dict[str, Any]

PROJECT_BUDGETS = "project_budgets"
# Job ids per provisions read while summing a month.
_PAGE = 500


class BudgetStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db

    async def list_stopping_budgets(self) -> list[Document]:
        """The budgets whose project's running jobs are stopped when it is over (few: one per
        project with such a budget)."""
        cursor = self._db[PROJECT_BUDGETS].find({"stop_running_jobs": True})
        return await cursor.to_list(None)

    async def find_budget(self, project: str) -> Document:
        """`{monthly_usd, stop_running_jobs}` of the project; {} when it has no budget."""
        doc = await self._db[PROJECT_BUDGETS].find_one({"_id": project})
        return {k: v for k, v in (doc or {}).items() if k != "_id"}

    async def save_budget(self, project: str, monthly_usd: float | None, stop: bool) -> None:
        """Set (or with `monthly_usd` None, remove) the project's budget. Operators only."""
        if monthly_usd is None:
            await self._db[PROJECT_BUDGETS].delete_one({"_id": project})
            return
        await self._db[PROJECT_BUDGETS].update_one(
            {"_id": project},
            {"$set": {"monthly_usd": float(monthly_usd), "stop_running_jobs": stop}},
            upsert=True,
        )

    async def find_month_spend(self, project: str, since: datetime, now: datetime) -> float:
        """USD the project's jobs created since `since` cost so far."""
        total = 0.0
        cursor = self._db["jobs"].find(
            {"project": project, "created_at": {"$gte": since}}, {"_id": 1}
        )
        page: list[str] = []
        async for doc in cursor:
            page.append(doc["_id"])
            if len(page) >= _PAGE:
                total += await self._page_spend(page, now)
                page = []
        if page:
            total += await self._page_spend(page, now)
        return round(total, 6)

    async def _page_spend(self, job_ids: list[str], now: datetime) -> float:
        provisions = await self._db["provisions"].find({"job_id": {"$in": job_ids}}).to_list(None)
        return spend_of(provisions, now)
