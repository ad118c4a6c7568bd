"""Operator routes (issue 13): project quotas and API keys, over HTTP.

Every route here stands behind `require_operator` (403 `operator_only` for a project key).
`PUT /projects/{project}/quotas` replaces the project's `project_quotas` document (null clears
an override); `POST /keys` answers the new key once (only its SHA-256 is stored); `GET /keys`
lists keys (a bounded page, newest first) without any secret or hash; `DELETE /keys/{key_id}` revokes one.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from neobatch.common.errors import InvalidInput, NotFound
from neobatch.common.ids import new_id
from neobatch.console.admin.schemas import (
    PROJECT_MAX_LENGTH,
    PROJECT_PATTERN,
    CreateKey,
    KeyCreated,
    KeyList,
    KeyOut,
    KeyRevoked,
    ProjectQuotas,
    ProjectQuotasOut,
)
from neobatch.console.keys.auth import (
    OPERATOR_ROLE,
    PROJECT_ROLE,
    key_doc,
    new_api_key,
    require_operator,
)
from neobatch.console.keys.store import KeyStore
from neobatch.console.paging import PageLimit, page_ends
from neobatch.console.quotas import QuotaStore
from neobatch.console.wire import unix_seconds, unix_seconds_or_none

_PROJECT = re.compile(PROJECT_PATTERN)


def _project(project: str) -> str:
    if len(project) > PROJECT_MAX_LENGTH or not _PROJECT.fullmatch(project):
        raise InvalidInput(
            f"project {project[:64]!r} is not a project name", code="invalid_project"
        )
    return project


def key_out(doc: dict[str, Any]) -> KeyOut:
    return KeyOut(
        id=doc["_id"],
        project=doc["project"],
        role=OPERATOR_ROLE if doc.get("role") == OPERATOR_ROLE else PROJECT_ROLE,
        name=doc.get("name") or "",
        created_at=unix_seconds_or_none(doc.get("created_at")) or 0,
        revoked_at=unix_seconds_or_none(doc.get("revoked_at")),
    )


class QuotaController(Controller):
    path = "/projects/{project:str}/quotas"
    guards = [require_operator]

    @get("/")
    async def get_quotas(
        self, project: FromPath[str], quota_store: NamedDependency[QuotaStore]
    ) -> ProjectQuotasOut:
        return ProjectQuotasOut(project=project, **await quota_store.find_quotas(_project(project)))

    @put("/")
    async def put_quotas(
        self,
        project: FromPath[str],
        data: JSONBody[ProjectQuotas],
        quota_store: NamedDependency[QuotaStore],
    ) -> ProjectQuotasOut:
        values = {"max_queued_jobs": data.max_queued_jobs, "max_machines": data.max_machines}
        await quota_store.save_quotas(_project(project), values)
        return ProjectQuotasOut(project=project, **await quota_store.find_quotas(project))


class KeyController(Controller):
    path = "/keys"
    guards = [require_operator]

    @post("/", status_code=200)
    async def create_key(
        self,
        data: JSONBody[CreateKey],
        key_store: NamedDependency[KeyStore],
        now: NamedDependency[datetime],
    ) -> KeyCreated:
        key_id, api_key = new_id("key"), new_api_key()
        role = OPERATOR_ROLE if data.operator else PROJECT_ROLE
        doc = key_doc(key_id, api_key, data.project, data.name, now, role=role)
        await key_store.insert_key(doc)
        return KeyCreated(
            id=key_id,
            project=data.project,
            role=role,
            name=data.name,
            created_at=unix_seconds(now),
            api_key=api_key,
        )

    @get("/")
    async def list_keys(
        self,
        key_store: NamedDependency[KeyStore],
        limit: PageLimit = 20,
        after: FromQuery[str | None] = None,
    ) -> KeyList:
        """Every project's keys, newest first, a page at a time (`after`: the last id of the
        previous page)."""
        docs, has_more = await key_store.list_key_page(limit, after)
        data = [key_out(doc) for doc in docs]
        return KeyList(data=data, has_more=has_more, **page_ends(data))

    @delete("/{key_id:str}", status_code=200)
    async def revoke_key(
        self,
        key_id: FromPath[str],
        key_store: NamedDependency[KeyStore],
        now: NamedDependency[datetime],
    ) -> KeyRevoked:
        if not await key_store.save_revocation(key_id, now):
            if await key_store.find_key(key_id) is None:
                raise NotFound(f"key {key_id[:64]!r} not found", code="key_not_found")
        return KeyRevoked(id=key_id)
