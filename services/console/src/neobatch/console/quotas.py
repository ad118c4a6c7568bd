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
QUOTA_FIELDS = ("max_queued_jobs", "max_machines")


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

    async def find_quotas(self, project: str) -> Document:
        """The project's overrides (`max_queued_jobs`, `max_machines`); {} when it has none."""
        doc = await self._db[PROJECT_QUOTAS].find_one({"_id": project})
        return {k: v for k, v in (doc or {}).items() if k in QUOTA_FIELDS}

    async def save_quotas(self, project: str, quotas: Document) -> None:
        """Replace the project's overrides: a field set to None is removed (the setting
        applies again). A whole-document write, last writer wins (operators only)."""
        unset = {k: "" for k in QUOTA_FIELDS if quotas.get(k) is None}
        update: Document = {"$set": {k: v for k, v in quotas.items() if v is not None}}
        if unset:
            update["$unset"] = unset
        if not update["$set"]:
            del update["$set"]
        await self._db[PROJECT_QUOTAS].update_one({"_id": project}, update, upsert=True)
