"""Models and deployment templates: ids, documents and their response shapes. Pure."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

from neobatch.common.errors import InvalidInput
from neobatch.console.schemas import CreateModel, CreateTemplate, ModelOut, TemplateOut

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def model_id_for(name: str) -> str:
    """`"Qwen2.5 7B Instruct"` → `"model-qwen2-5-7b-instruct"` (AIBrix derives ids this way)."""
    slug = _NON_ALNUM.sub("-", name.lower()).strip("-")
    if not slug:
        raise InvalidInput(f"name {name!r} must contain at least one letter or digit")
    return f"model-{slug}"


def _unix(value: datetime) -> int:
    return int(value.timestamp())


def model_doc(request: CreateModel, now: datetime) -> dict[str, Any]:
    doc = msgspec.to_builtins(request)
    doc["_id"] = model_id_for(request.name)
    doc["created_at"] = now
    return doc


def model_out(doc: dict[str, Any]) -> ModelOut:
    return ModelOut(
        id=doc["_id"],
        name=doc["name"],
        categories=list(doc.get("categories") or []),
        serving_name=doc.get("serving_name") or "",
        description=doc.get("description") or "",
        tags=list(doc.get("tags") or []),
        context_length=doc.get("context_length"),
        created_at=_unix(doc["created_at"]),
    )


def template_doc(
    template_id: str, model_id: str, request: CreateTemplate, now: datetime
) -> dict[str, Any]:
    return {
        "_id": template_id,
        "model_id": model_id,
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
        created_at=_unix(doc["created_at"]),
    )
