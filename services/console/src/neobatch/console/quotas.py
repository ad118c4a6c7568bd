"""QuotaStore: `project_quotas`, per-project overrides of the quota settings.

A document `{_id: project, max_queued_jobs?, max_machines?}` overrides
`NEOBATCH_PROJECT_MAX_QUEUED_JOBS` (read here, at job creation) and
`NEOBATCH_PROJECT_MAX_MACHINES` (read by the planner) for that project; an absent field keeps
the setting. Operators write them (operator keys are their own change); nothing else does.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

Document = dict[str, Any]

PROJECT_QUOTAS = "project_quotas"


class QuotaStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db

    async def find_max_queued_jobs(self, project: str) -> int | None:
        """The project's own queued-jobs quota, or None when the setting applies."""
        doc = await self._db[PROJECT_QUOTAS].find_one({"_id": project}, {"max_queued_jobs": 1})
        value = (doc or {}).get("max_queued_jobs")
        return (
            int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
