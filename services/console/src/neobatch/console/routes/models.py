"""Models and their deployment templates (aibrix-reference §1.8, §1.9)."""

from __future__ import annotations

from datetime import datetime

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from neobatch.common.errors import NotFound
from neobatch.common.ids import new_id
from neobatch.console import catalog
from neobatch.console.schemas import (
    CreateModel,
    CreateTemplate,
    ModelList,
    ModelOut,
    TemplateList,
    TemplateOut,
)
from neobatch.console.store import ConsoleStore


class ModelController(Controller):
    path = "/models"

    # 200 rather than 201 on create: AIBrix (grpc-gateway) answers 200 and clients check it.
    @post("/", status_code=200)
    async def create_model(
        self,
        data: JSONBody[CreateModel],
        store: NamedDependency[ConsoleStore],
        now: NamedDependency[datetime],
    ) -> ModelOut:
        doc = catalog.model_doc(data, now)
        await store.insert_model(doc)
        return catalog.model_out(doc)

    @get("/")
    async def list_models(
        self,
        store: NamedDependency[ConsoleStore],
        search: FromQuery[str] = "",
        category: FromQuery[str] = "",
    ) -> ModelList:
        """Newest first; `search` matches the name, `category` one of the categories."""
        docs = await store.list_models(search=search, category=category)
        return ModelList(data=[catalog.model_out(doc) for doc in docs])

    @get("/{model_id:str}")
    async def get_model(
        self, model_id: FromPath[str], store: NamedDependency[ConsoleStore]
    ) -> ModelOut:
        return catalog.model_out(await store.get_model(model_id))

    @post("/{model_id:str}/deployment-templates", status_code=200)
    async def create_template(
        self,
        model_id: FromPath[str],
        data: JSONBody[CreateTemplate],
        store: NamedDependency[ConsoleStore],
        now: NamedDependency[datetime],
    ) -> TemplateOut:
        await store.get_model(model_id)
        doc = catalog.template_doc(new_id("tmpl"), model_id, data, now)
        await store.insert_template(doc)
        return catalog.template_out(doc)

    @get("/{model_id:str}/deployment-templates")
    async def list_templates(
        self,
        model_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
        name: FromQuery[str] = "",
        status: FromQuery[str] = "",
    ) -> TemplateList:
        await store.get_model(model_id)
        docs = await store.list_templates(model_id, name=name, status=status)
        return TemplateList(data=[catalog.template_out(doc) for doc in docs])

    @get("/{model_id:str}/deployment-templates/{template_id:str}")
    async def get_template(
        self,
        model_id: FromPath[str],
        template_id: FromPath[str],
        store: NamedDependency[ConsoleStore],
    ) -> TemplateOut:
        return catalog.template_out(await store.get_template(model_id, template_id))

    @get("/{model_id:str}/deployment-templates/by-name/{name:str}")
    async def resolve_template(
        self,
        model_id: FromPath[str],
        name: FromPath[str],
        store: NamedDependency[ConsoleStore],
        version: FromQuery[str] = "",
    ) -> TemplateOut:
        """An exact version, or with none the highest active one (AIBrix's numeric order)."""
        await store.get_model(model_id)
        doc = await store.find_template(name, version, model_id)
        if doc is None:
            which = f"version {version!r}" if version else "an active version"
            raise NotFound(
                f"template {name!r} has no {which} for model {model_id!r}",
                code="template_not_found",
            )
        return catalog.template_out(doc)
