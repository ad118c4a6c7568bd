"""Bodies of the operator routes: project quotas and API keys. A key's secret appears only in
`KeyCreated`, the answer to its creation; nothing else carries it."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from neobatch.console.paging import PageEnds

# A quota: a bound, not a wish (past 1,000,000 queued jobs or machines is a typo).
Quota = Annotated[int, Meta(ge=0, le=1_000_000)]
# A project name, in bodies (`Project`) and in paths (`admin.routes`): one rule for both.
PROJECT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
PROJECT_MAX_LENGTH = 128
Project = Annotated[
    str, Meta(min_length=1, max_length=PROJECT_MAX_LENGTH, pattern=f"^{PROJECT_PATTERN}$")
]


class ProjectQuotas(msgspec.Struct, kw_only=True):
    """A project's quota overrides; null (or absent): the console's setting applies."""

    max_queued_jobs: Quota | None = None
    max_machines: Quota | None = None


class ProjectQuotasOut(msgspec.Struct, kw_only=True):
    project: str
    max_queued_jobs: int | None = None
    max_machines: int | None = None


class CreateKey(msgspec.Struct, kw_only=True):
    project: Project
    name: Annotated[str, Meta(max_length=256)] = ""
    operator: bool = False


class KeyOut(msgspec.Struct, kw_only=True):
    id: str
    project: str
    role: str
    name: str
    created_at: int
    revoked_at: int | None = None


class KeyCreated(msgspec.Struct, kw_only=True):
    """The new key: `api_key` is shown this once (only its SHA-256 is stored)."""

    id: str
    project: str
    role: str
    name: str
    created_at: int
    api_key: str


class KeyList(PageEnds, kw_only=True):
    object: str = "list"
    data: list[KeyOut]


class KeyRevoked(msgspec.Struct, kw_only=True):
    id: str
    revoked: bool = True
