"""Models and their deployment templates (aibrix-reference §1.8, §1.9), and the GPU offers
catalog.

`GET /api/v1/catalog` lists the GPU offers of every configured cloud provider, cheapest
first. The resource-manager owns that data: it refreshes the `offers` collection (a cache of
each provider's live catalog: GPU type, family, count, region, hourly price, availability);
this route only reads it. `?family=H100` and `?available=true` filter.
"""

from __future__ import annotations

from datetime import datetime

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from neobatch.common.errors import Conflict, NotFound
from neobatch.common.ids import new_id
from neobatch.console.catalog import rules
from neobatch.console.catalog.schemas import (
    CreateModel,
    CreateTemplate,
    ModelList,
    ModelOut,
    OfferList,
    TemplateList,
    TemplateOut,
)
from neobatch.console.catalog.store import CatalogStore
from neobatch.console.keys.auth import require_operator


class ModelController(Controller):
    path = "/models"

    # 200 rather than 201 on create: AIBrix (grpc-gateway) answers 200 and clients check it.
    @post("/", status_code=200, guards=[require_operator])
    async def create_model(
        self,
        data: JSONBody[CreateModel],
        catalog_store: NamedDependency[CatalogStore],
        now: NamedDependency[datetime],
    ) -> ModelOut:
        doc = rules.model_doc(data, now)
        if not await catalog_store.save_model(doc):
            raise Conflict(f"model {doc['_id']!r} already exists", code="model_exists")
        return rules.model_out(doc)

    @get("/")
    async def list_models(
        self,
        catalog_store: NamedDependency[CatalogStore],
        search: FromQuery[str] = "",
        category: FromQuery[str] = "",
    ) -> ModelList:
        """Newest first; `search` matches the name, `category` one of the categories."""
        docs = await catalog_store.list_models(search=search, category=category)
        return ModelList(data=[rules.model_out(doc) for doc in docs])

    @get("/{model_id:str}")
    async def get_model(
        self, model_id: FromPath[str], catalog_store: NamedDependency[CatalogStore]
    ) -> ModelOut:
        return rules.model_out(await catalog_store.get_model(model_id))

    @post("/{model_id:str}/deployment-templates", status_code=200, guards=[require_operator])
    async def create_template(
        self,
        model_id: FromPath[str],
        data: JSONBody[CreateTemplate],
        catalog_store: NamedDependency[CatalogStore],
        now: NamedDependency[datetime],
    ) -> TemplateOut:
        await catalog_store.get_model(model_id)
        doc = rules.template_doc(new_id("tmpl"), model_id, data, now)
        if not await catalog_store.save_template(doc):
            raise Conflict(
                f"template {doc['name']!r} version {doc['version']!r} already exists "
                f"for model {model_id!r}",
                code="template_exists",
            )
        return rules.template_out(doc)

    @get("/{model_id:str}/deployment-templates")
    async def list_templates(
        self,
        model_id: FromPath[str],
        catalog_store: NamedDependency[CatalogStore],
        name: FromQuery[str] = "",
        status: FromQuery[str] = "",
    ) -> TemplateList:
        await catalog_store.get_model(model_id)
        docs = await catalog_store.list_templates(model_id, name=name, status=status)
        return TemplateList(data=[rules.template_out(doc) for doc in docs])

    @get("/{model_id:str}/deployment-templates/{template_id:str}")
    async def get_template(
        self,
        model_id: FromPath[str],
        template_id: FromPath[str],
        catalog_store: NamedDependency[CatalogStore],
    ) -> TemplateOut:
        return rules.template_out(await catalog_store.get_template(model_id, template_id))

    @get("/{model_id:str}/deployment-templates/by-name/{name:str}")
    async def resolve_template(
        self,
        model_id: FromPath[str],
        name: FromPath[str],
        catalog_store: NamedDependency[CatalogStore],
        version: FromQuery[str] = "",
    ) -> TemplateOut:
        """An exact version, or with none the highest active one (AIBrix's numeric order)."""
        await catalog_store.get_model(model_id)
        doc = await catalog_store.find_template(name, version, model_id)
        if doc is None:
            which = f"version {version!r}" if version else "an active version"
            raise NotFound(
                f"template {name!r} has no {which} for model {model_id!r}",
                code="template_not_found",
            )
        return rules.template_out(doc)


@get("/catalog")
async def list_offers(
    catalog_store: NamedDependency[CatalogStore],
    family: FromQuery[str | None] = None,
    available: FromQuery[bool | None] = None,
) -> OfferList:
    docs = await catalog_store.list_offers(family, available)
    return OfferList(data=[rules.offer_out(doc) for doc in docs])
