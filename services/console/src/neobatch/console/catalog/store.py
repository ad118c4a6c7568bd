"""CatalogStore: models, deployment templates and, read-only, the resource-manager's GPU
offers cache (`offers`)."""

from __future__ import annotations

import re
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from neobatch.common.errors import NotFound
from neobatch.common.mongo import ensure_indexes
from neobatch.console.catalog.rules import latest_version
from neobatch.console.page_store import find_page

Document = dict[str, Any]

MODELS = "models"
TEMPLATES = "templates"
OFFERS = "offers"
# Model lists page newest first (page_store.find_page).
MODEL_INDEXES = [
    IndexModel([("created_at", DESCENDING), ("_id", DESCENDING)], name="newest_first"),
]
TEMPLATE_INDEXES = [
    # Backs the 409 on a duplicate template: the check and the insert cannot race.
    IndexModel(
        [("model_id", ASCENDING), ("name", ASCENDING), ("version", ASCENDING)],
        unique=True,
        name="model_name_version",
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


class CatalogStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self._db = db

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self._db[MODELS], MODEL_INDEXES)
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
        *,
        name: str = "",
        status: str = "",
        limit: int,
        after: str | None = None,
    ) -> tuple[list[Document], bool]:
        """A page of the model's templates, newest first, after the template `after`."""
        query: Document = {"model_id": model_id}
        if name:
            query["name"] = name
        if status:
            query["status"] = status
        cursor = {"_id": after} if after else None
        return await find_page(self._db[TEMPLATES], query, after=cursor, limit=limit)

    async def get_template(self, model_id: str, template_id: str) -> Document:
        doc = await self._db[TEMPLATES].find_one({"_id": template_id, "model_id": model_id})
        if doc is None:
            raise NotFound(
                f"template {template_id!r} not found for model {model_id!r}",
                code="template_not_found",
            )
        return doc

    async def find_template(self, name: str, version: str, model_id: str) -> Document | None:
        """An exact (name, version), or with no version the highest active version of `name`.

        `model_id` narrows the search when given (AIBrix: templates are named per model).
        """
        query: Document = {"name": name}
        if model_id:
            query["model_id"] = model_id
        if version:
            query["version"] = version
            cursor = self._db[TEMPLATES].find(query).sort([("created_at", DESCENDING)]).limit(1)
            found = await cursor.to_list(1)
            return found[0] if found else None
        query["status"] = "active"
        # A name has a handful of versions: ordering them in Python keeps AIBrix's numeric order.
        return latest_version(await self._db[TEMPLATES].find(query).to_list(None))

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
