"""Models, deployment templates and GPU offers: ids, documents and their response shapes. Pure."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from neobatch.common.errors import InvalidInput
from neobatch.console.catalog.schemas import (
    CreateModel,
    CreateTemplate,
    ModelOut,
    OfferOut,
    TemplateOut,
    UpdateModel,
)
from neobatch.console.wire import unix_seconds

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def model_id_for(name: str) -> str:
    """`"Qwen2.5 7B Instruct"` → `"model-qwen2-5-7b-instruct"` (AIBrix derives ids this way)."""
    slug = _NON_ALNUM.sub("-", name.lower()).strip("-")
    if not slug:
        raise InvalidInput(f"name {name!r} must contain at least one letter or digit")
    return f"model-{slug}"


def compare_versions(a: str, b: str) -> int:
    """AIBrix's template version order: a leading `v` stripped, dot-separated segments compared
    as numbers when both are numeric, else as strings; a prefix sorts first (`v1.2` < `v1.2.1`).
    """
    left, right = a.removeprefix("v").split("."), b.removeprefix("v").split(".")
    for x, y in zip(left, right, strict=False):
        if x == y:
            continue
        if x.isdigit() and y.isdigit():
            return -1 if int(x) < int(y) else 1
        return -1 if x < y else 1
    return (len(left) > len(right)) - (len(left) < len(right))


def latest_version(templates: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The template with the highest version (`v1.10.0` beats `v1.9.0`, which creation order
    or plain string order would get wrong); equal versions go to the newest.
    """
    if not templates:
        return None
    by_creation = sorted(templates, key=lambda t: t["created_at"])
    by_version = functools.cmp_to_key(lambda x, y: compare_versions(x["version"], y["version"]))
    return max(reversed(by_creation), key=by_version)


def model_doc(request: CreateModel, now: datetime) -> dict[str, Any]:
    doc = msgspec.to_builtins(request)
    doc["_id"] = model_id_for(request.name)
    doc["created_at"] = now
    return doc


def model_update(request: UpdateModel) -> dict[str, Any]:
    """The `$set` of a partial model update: only the fields the request names."""
    return {k: v for k, v in msgspec.to_builtins(request).items() if v is not None}


def model_out(doc: dict[str, Any]) -> ModelOut:
    return ModelOut(
        id=doc["_id"],
        name=doc["name"],
        categories=list(doc.get("categories") or []),
        serving_name=doc.get("serving_name") or "",
        description=doc.get("description") or "",
        tags=list(doc.get("tags") or []),
        context_length=doc.get("context_length"),
        default_template=doc.get("default_template") or "",
        created_at=unix_seconds(doc["created_at"]),
    )


def template_doc(
    template_id: str,
    model_id: str,
    request: CreateTemplate,
    now: datetime,
    project: str | None = None,
) -> dict[str, Any]:
    return {
        "_id": template_id,
        "model_id": model_id,
        # None: published by an operator, for every project.
        "project": project,
        "name": request.name,
        "version": request.version,
        "status": request.status,
        # Stored normalised: every field present with its default, unknown keys dropped.
        "spec": msgspec.to_builtins(request.spec),
        "created_at": now,
    }


def template_out(doc: dict[str, Any]) -> TemplateOut:
    return TemplateOut(
        id=doc["_id"],
        model_id=doc["model_id"],
        name=doc["name"],
        version=doc["version"],
        status=doc["status"],
        spec=doc["spec"],
        project=doc.get("project"),
        created_at=unix_seconds(doc["created_at"]),
    )


def offer_out(doc: dict[str, Any]) -> OfferOut:
    return OfferOut(
        id=doc["_id"],
        provider=doc.get("provider"),
        gpu_type=doc.get("gpu_type"),
        gpu_description=doc.get("gpu_description"),
        family=doc.get("family"),
        gpu_count=doc.get("gpu_count"),
        region=doc.get("region"),
        price_per_hour=doc.get("price_per_hour"),
        available=doc.get("available"),
        updated_at=doc.get("updated_at"),
    )
