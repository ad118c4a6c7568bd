"""Models and their deployment templates (aibrix-reference §1.8, §1.9), and the GPU offers
catalog.

Every key reads the catalog; only an operator key changes models and published templates
(`require_operator`: 403 `operator_only`). Who owns a template and which one a name resolves
to is decided in catalog/access.py: a project key sees the published templates and its own.

`GET /api/v1/catalog` lists the GPU offers of every configured cloud provider, cheapest
first. The resource-manager owns that data: it refreshes the `offers` collection (a cache of
each provider's live catalog: GPU type, family, count, region, hourly price, availability);
this route only reads it. `?family=H100` and `?available=true` filter.
"""

from __future__ import annotations

from datetime import datetime

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from neobatch.common.errors import Conflict, NotFound
from neobatch.common.ids import new_id
from neobatch.console.catalog import access, rules
from neobatch.console.catalog.schemas import (
    CreateModel,
    CreateTemplate,
    ModelList,
    ModelOut,
    OfferList,
    TemplateDeleted,
    TemplateList,
    TemplateOut,
    UpdateModel,
    UpdateTemplate,
)
from neobatch.console.catalog.store import CatalogStore
from neobatch.console.keys.auth import Caller, require_operator
from neobatch.console.paging import PageLimit, page_ends
from neobatch.console.settings import ConsoleSettings


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

    @put("/{model_id:str}", guards=[require_operator])
    async def update_model(
        self,
        model_id: FromPath[str],
        data: JSONBody[UpdateModel],
        catalog_store: NamedDependency[CatalogStore],
    ) -> ModelOut:
        """A partial update (AIBrix's PUT): fields left out keep their values."""
        await catalog_store.get_model(model_id)
        return rules.model_out(
            await catalog_store.save_model_update(model_id, rules.model_update(data))
        )

    @get("/")
    async def list_models(
        self,
        catalog_store: NamedDependency[CatalogStore],
        search: FromQuery[str] = "",
        category: FromQuery[str] = "",
        limit: PageLimit = 20,
        after: FromQuery[str | None] = None,
    ) -> ModelList:
        """Newest first, a page at a time; `search` matches the name, `category` one of the
        categories."""
        docs, has_more = await catalog_store.list_models(
            search=search, category=category, limit=limit, after=after
        )
        data = [rules.model_out(doc) for doc in docs]
        return ModelList(data=data, has_more=has_more, **page_ends(data))

    @get("/{model_id:str}")
    async def get_model(
        self, model_id: FromPath[str], catalog_store: NamedDependency[CatalogStore]
    ) -> ModelOut:
        return rules.model_out(await catalog_store.get_model(model_id))

    @post("/{model_id:str}/deployment-templates", status_code=200)
    async def create_template(
        self,
        model_id: FromPath[str],
        data: JSONBody[CreateTemplate],
        catalog_store: NamedDependency[CatalogStore],
        caller: NamedDependency[Caller],
        settings: NamedDependency[ConsoleSettings],
        now: NamedDependency[datetime],
    ) -> TemplateOut:
        """An operator publishes; a project key makes its own private template, where allowed."""
        owner = access.template_owner(
            is_operator=caller.is_operator,
            project=caller.project,
            private=data.private,
            allowed=settings.private_template_projects,
        )
        if owner is not None and not caller.is_operator:
            access.check_project_spec(data.spec)
        await catalog_store.get_model(model_id)
        # A private template never shadows a published one, nor the other way round.
        if await catalog_store.find_template_named(data.name, published=owner is not None):
            raise Conflict(
                f"template name {data.name!r} is taken by a "
                f"{'published' if owner is not None else 'private'} template; choose another",
                code="template_name_taken",
            )
        doc = rules.template_doc(new_id("tmpl"), model_id, data, now, owner)
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
        caller: NamedDependency[Caller],
        name: FromQuery[str] = "",
        status: FromQuery[str] = "",
        limit: PageLimit = 20,
        after: FromQuery[str | None] = None,
    ) -> TemplateList:
        """The published templates and the caller's project's own (an operator: all)."""
        await catalog_store.get_model(model_id)
        docs, has_more = await catalog_store.list_templates(
            model_id, caller.scope, name=name, status=status, limit=limit, after=after
        )
        data = [rules.template_out(doc) for doc in docs]
        return TemplateList(data=data, has_more=has_more, **page_ends(data))

    @get("/{model_id:str}/deployment-templates/{template_id:str}")
    async def get_template(
        self,
        model_id: FromPath[str],
        template_id: FromPath[str],
        catalog_store: NamedDependency[CatalogStore],
        caller: NamedDependency[Caller],
    ) -> TemplateOut:
        doc = await catalog_store.get_template(model_id, template_id, caller.scope)
        return rules.template_out(doc)

    @put("/{model_id:str}/deployment-templates/{template_id:str}", guards=[require_operator])
    async def update_template(
        self,
        model_id: FromPath[str],
        template_id: FromPath[str],
        data: JSONBody[UpdateTemplate],
        catalog_store: NamedDependency[CatalogStore],
    ) -> TemplateOut:
        """Deprecate (or reactivate) a version: a deprecated one runs only when named exactly."""
        await catalog_store.get_template(model_id, template_id, None)
        doc = await catalog_store.save_template_status(model_id, template_id, data.status)
        return rules.template_out(doc)

    @delete(
        "/{model_id:str}/deployment-templates/{template_id:str}",
        status_code=200,
        guards=[require_operator],
    )
    async def delete_template(
        self,
        model_id: FromPath[str],
        template_id: FromPath[str],
        catalog_store: NamedDependency[CatalogStore],
    ) -> TemplateDeleted:
        """Remove a version (no error when it is already gone, as AIBrix); jobs keep theirs."""
        deleted = await catalog_store.delete_template(model_id, template_id)
        return TemplateDeleted(id=template_id, deleted=deleted)

    @get("/{model_id:str}/deployment-templates/by-name/{name:str}")
    async def resolve_template(
        self,
        model_id: FromPath[str],
        name: FromPath[str],
        catalog_store: NamedDependency[CatalogStore],
        caller: NamedDependency[Caller],
        version: FromQuery[str] = "",
    ) -> TemplateOut:
        """An exact version, or with none the highest active one (AIBrix's numeric order), of
        the caller's project's template or else the published one."""
        await catalog_store.get_model(model_id)
        candidates = await catalog_store.list_named_templates(
            name, version, model_id, caller.project
        )
        doc = access.choose_by_name(candidates, version, caller.project)
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
