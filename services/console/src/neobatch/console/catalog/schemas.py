"""Models, deployment templates and GPU offers: request and response bodies.

Unknown keys are ignored, as AIBrix does (clients written for it send extra fields).
Every number, string, list and map has an upper bound (issue 13): a value past int64 cannot
be stored (BSON) and was a 500; now it is a 400 naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from neobatch.console.wire import Endpoint, Int64, Label, Text

Name = Annotated[str, Meta(min_length=1, max_length=256)]
# GPUs, replicas, parallel ranks: far above any machine, far below int64.
Count = Annotated[int, Meta(ge=1, le=1024)]
EngineArg = Annotated[str, Meta(max_length=4096)] | Int64 | float | bool
Labels = Annotated[list[Label], Meta(max_length=64)]
Args = Annotated[list[Text], Meta(max_length=256)]


# --- models ----------------------------------------------------------------------------------


class CreateModel(msgspec.Struct, kw_only=True):
    name: Name
    categories: Labels = []
    # What batch requests put in `body.model`; falls back to the template's model_source.uri.
    serving_name: Text = ""
    description: Annotated[str, Meta(max_length=4096)] = ""
    tags: Labels = []
    context_length: Annotated[int, Meta(ge=0, le=100_000_000)] | None = None


class ModelOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    name: str
    categories: list[str]
    serving_name: str
    description: str
    tags: list[str]
    context_length: int | None
    created_at: int


class ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[ModelOut]


# --- deployment templates (aibrix-reference §1.9) --------------------------------------------


class TemplateEngine(msgspec.Struct, kw_only=True):
    type: Label = "vllm"
    version: Label = ""
    image: Text = ""
    invocation: Label = ""
    serve_args: Args = []
    health_endpoint: Label = "/health"
    ready_timeout_seconds: Annotated[int, Meta(ge=1, le=7 * 86400)] = 1800
    metrics_endpoint: Label = ""
    # Our extension (CONTRACTS.md): launch command overriding `vllm serve`, with {port} and
    # {model} substituted, and the engine's port on the host.
    command: Args | None = None
    port: Annotated[int, Meta(ge=1, le=65535)] = 8000


class ModelSource(msgspec.Struct, kw_only=True):
    type: Label = "huggingface"
    uri: Annotated[str, Meta(min_length=1, max_length=512)]
    revision: Label = ""
    tokenizer_path: Text = ""
    chat_template_path: Text = ""
    # The name of a secret held elsewhere, never the secret itself.
    auth_secret_ref: Label = ""


class Accelerator(msgspec.Struct, kw_only=True):
    type: Annotated[str, Meta(min_length=1, max_length=128)]
    count: Count = 1
    vram_gb: Annotated[int, Meta(ge=0, le=100_000)] | None = None
    interconnect: Label = ""
    sku_hint: Label = ""


class Parallelism(msgspec.Struct, kw_only=True):
    tp: Count = 1
    pp: Count = 1
    dp: Count = 1
    ep: Count = 1
    sp: Count = 1
    cp: Count = 1


class Quantization(msgspec.Struct, kw_only=True):
    weight: Label = ""
    kv_cache: Label = ""
    weights_artifact_uri: Text = ""


class TemplateSpec(msgspec.Struct, kw_only=True):
    engine: TemplateEngine
    model_source: ModelSource
    accelerator: Accelerator
    parallelism: Parallelism = msgspec.field(default_factory=Parallelism)
    engine_args: Annotated[dict[Label, EngineArg], Meta(max_length=256)] = {}
    quantization: Quantization | None = None
    # Empty: the endpoints every engine serves (jobs.rules.DEFAULT_ENDPOINTS).
    supported_endpoints: Annotated[list[Endpoint], Meta(max_length=32)] = []
    deployment_mode: Label = "dedicated"


class CreateTemplate(msgspec.Struct, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    version: Annotated[str, Meta(min_length=1, max_length=64)] = "v1.0.0"
    status: Literal["active", "deprecated", "draft"] = "active"
    spec: TemplateSpec


class TemplateOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model_deployment_template"
    model_id: str
    name: str
    version: str
    status: str
    spec: dict[str, Any]
    created_at: int


class TemplateList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[TemplateOut]


# --- GPU offers (the resource-manager's `offers` cache) ----------------------------------------


class OfferOut(msgspec.Struct, kw_only=True):
    """One way to get a machine, as the resource-manager last saw it; a field the provider did
    not give is null."""

    id: str
    provider: str | None
    gpu_type: str | None
    gpu_description: str | None
    family: str | None
    gpu_count: int | None
    region: str | None
    price_per_hour: float | None
    available: bool | None
    updated_at: datetime | None


class OfferList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[OfferOut]
