"""CatalogStore: models, deployment templates and, read-only, the resource-manager's GPU
offers cache (`offers`)."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure

from neobatch.common.errors import NotFound
from neobatch.common.mongo import ensure_indexes
from neobatch.console.page_store import find_page

Document = dict[str, Any]

MODELS = "models"
TEMPLATES = "templates"
OFFERS = "offers"
# Model lists page newest first (page_store.find_page).
MODEL_INDEXES = [
    IndexModel([("created_at", DESCENDING), ("_id", DESCENDING)], name="newest_first"),
]
# The unique index before templates had owners: a project's private (model, name, version)
# must not collide with another project's, so it is replaced by the one below.
_OLD_UNIQUE = "model_name_version"
TEMPLATE_INDEXES = [
    # Backs the 409 on a duplicate template: the check and the insert cannot race. A published
    # template has project None (or, stored before owners, no project: indexed as null).
    IndexModel(
        [("model_id", ASCENDING), ("name", ASCENDING), ("version", ASCENDING), ("project", 1)],
        unique=True,
        name="model_name_version_project",
    ),
    IndexModel(
        [("name", ASCENDING), ("status", ASCENDING), ("created_at", DESCENDING)],
        name="resolve",
    ),
    IndexModel(
        [("model_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
        name="model_newest_first",
    ),
]


def _visible(query: Document, project: str | None) -> Document:
    """`query` narrowed to the published templates and `project`'s own (None: no narrowing)."""
    if project is None:
        return query
    return {**query, "project": {"$in": [None, project]}}


class CatalogStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self._db[MODELS], MODEL_INDEXES)
        with contextlib.suppress(OperationFailure):  # absent: a new database, or done before
            await self._db[TEMPLATES].drop_index(_OLD_UNIQUE)
        await ensure_indexes(self._db[TEMPLATES], TEMPLATE_INDEXES)

    # --- models ------------------------------------------------------------------------------

    async def save_model(self, doc: Document) -> bool:
        """Insert the model unless its id is taken; False when it is."""
        return await self._insert_new(MODELS, doc)

    async def find_model(self, model_id: str) -> Document | None:
        return await self._db[MODELS].find_one({"_id": model_id})

    async def get_model(self, model_id: str) -> Document:
        doc = await self.find_model(model_id)
        if doc is None:
            raise NotFound(f"model {model_id!r} not found", code="model_not_found")
        return doc

    async def save_model_update(self, model_id: str, fields: Document) -> Document:
        """Set `fields` on the model; the model as stored after, or 404."""
        if fields:
            await self._db[MODELS].update_one({"_id": model_id}, {"$set": fields})
        return await self.get_model(model_id)

    async def list_models_serving(self, served: str) -> list[Document]:
        """The models whose serving name is `served`."""
        return await self._db[MODELS].find({"serving_name": served}).to_list(None)

    async def list_models_by_id(self, model_ids: list[str]) -> dict[str, Document]:
        docs = await self._db[MODELS].find({"_id": {"$in": sorted(set(model_ids))}}).to_list(None)
        return {doc["_id"]: doc for doc in docs}

    async def list_models(
        self, *, search: str = "", category: str = "", limit: int, after: str | None = None
    ) -> tuple[list[Document], bool]:
        """A page, newest first, after the model `after`; `search` matches the name,
        `category` one of the categories. Whether more follow."""
        query: Document = {}
        if search:
            query["name"] = {"$regex": re.escape(search), "$options": "i"}
        if category:
            query["categories"] = {"$regex": f"^{re.escape(category)}$", "$options": "i"}
        cursor = {"_id": after} if after else None
        return await find_page(self._db[MODELS], query, after=cursor, limit=limit)

    # --- deployment templates ----------------------------------------------------------------

    async def save_template(self, doc: Document) -> bool:
        """Insert the template unless the model has this (name, version); False when it has."""
        return await self._insert_new(TEMPLATES, doc)

    async def list_templates(
        self,
        model_id: str,
        project: str | None,
        *,
        name: str = "",
        status: str = "",
        limit: int,
        after: str | None = None,
    ) -> tuple[list[Document], bool]:
        """A page of the model's templates `project` may see (its own and the published ones;
        None: every template, for operators), newest first, after the template `after`."""
        query = _visible({"model_id": model_id}, project)
        if name:
            query["name"] = name
        if status:
            query["status"] = status
        cursor = {"_id": after} if after else None
        return await find_page(self._db[TEMPLATES], query, after=cursor, limit=limit)

    async def get_template(self, model_id: str, template_id: str, project: str | None) -> Document:
        """The template, if `project` may see it (None: any); another project's is as missing."""
        query = _visible({"_id": template_id, "model_id": model_id}, project)
        doc = await self._db[TEMPLATES].find_one(query)
        if doc is None:
            raise NotFound(
                f"template {template_id!r} not found for model {model_id!r}",
                code="template_not_found",
            )
        return doc

    async def list_named_templates(
        self, name: str, version: str, model_id: str, project: str
    ) -> list[Document]:
        """The templates named `name` that `project` may see, narrowed to a model and an exact
        version when given (catalog.access.choose_by_name picks one)."""
        query = _visible({"name": name}, project)
        if model_id:
            query["model_id"] = model_id
        if version:
            query["version"] = version
        # A name has a handful of versions: access.choose_by_name orders them in Python.
        return await self._db[TEMPLATES].find(query).to_list(None)

    async def list_serving_templates(self, served: str, project: str) -> list[Document]:
        """The active templates `project` may see whose model serves `served`, or, for models
        without a serving name, whose model_source.uri is `served` (access.serves decides)."""
        model_ids = [doc["_id"] for doc in await self.list_models_serving(served)]
        query = _visible({"status": "active", "model_id": {"$in": model_ids}}, project)
        by_model = await self._db[TEMPLATES].find(query).to_list(None)
        query = _visible({"status": "active", "spec.model_source.uri": served}, project)
        by_uri = await self._db[TEMPLATES].find(query).to_list(None)
        unique = {doc["_id"]: doc for doc in [*by_model, *by_uri]}
        return list(unique.values())

    async def find_template_named(self, name: str, *, published: bool) -> Document | None:
        """A published template named `name` (`published`), else a private one of any project:
        the two never share a name."""
        owner: Document = {"project": None} if published else {"project": {"$ne": None}}
        return await self._db[TEMPLATES].find_one({"name": name, **owner})

    async def save_template_status(self, model_id: str, template_id: str, status: str) -> Document:
        """Set the version's status (active, deprecated, draft); the template after, or 404."""
        await self._db[TEMPLATES].update_one(
            {"_id": template_id, "model_id": model_id}, {"$set": {"status": status}}
        )
        return await self.get_template(model_id, template_id, None)

    async def delete_template(self, model_id: str, template_id: str) -> bool:
        """Remove the version; False if there was none. Jobs keep their spec inline."""
        result = await self._db[TEMPLATES].delete_one({"_id": template_id, "model_id": model_id})
        return result.deleted_count == 1

    async def _insert_new(self, collection: str, doc: Document) -> bool:
        # A unique index decides, so two creates of the same thing cannot both win.
        try:
            await self._db[collection].insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    # --- GPU offers --------------------------------------------------------------------------

    async def list_offers(self, family: str | None, available: bool | None) -> list[Document]:
        """The resource-manager's offers cache, cheapest first."""
        query: Document = {}
        if family:
            query["family"] = family.upper()
        if available is not None:
            query["available"] = available
        cursor = self._db[OFFERS].find(query).sort([("price_per_hour", 1), ("_id", 1)])
        return [doc async for doc in cursor]
