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

from neobatch.console.paging import PageEnds
from neobatch.console.wire import Endpoint, Int64, Label, Text

Name = Annotated[str, Meta(min_length=1, max_length=256)]
# GPUs, replicas, parallel ranks: far above any machine, far below int64.
Count = Annotated[int, Meta(ge=1, le=1024)]
Labels = Annotated[list[Label], Meta(max_length=64)]
Positive = Annotated[int, Meta(ge=1)]
# What reaches a machine's command line: quoted there, and refused here when it holds a NUL or
# a line break (no shell line of ours can carry one) or, as a first word, starts an option.
# `$` would let one trailing newline through (Python's regex): END is the string's true end.
END = r"(?![\s\S])"
Arg = Annotated[str, Meta(max_length=1024, pattern=r"^[^\x00\r\n]*" + END)]
Word = Annotated[
    str, Meta(min_length=1, max_length=512, pattern=r"^[^\x00\r\n-][^\x00\r\n]*" + END)
]
Command = Annotated[list[Arg], Meta(min_length=1, max_length=64)]
ServeArgs = Annotated[list[Arg], Meta(max_length=64)]
# A Docker image reference; never an option (`--privileged`) to `docker run`.
Image = Annotated[str, Meta(max_length=256, pattern=r"^([A-Za-z0-9][A-Za-z0-9._/:@-]*)?" + END)]
ArgKey = Annotated[str, Meta(max_length=128, pattern=r"^-{0,2}[A-Za-z0-9][A-Za-z0-9_.-]*" + END)]
EngineArg = Arg | Int64 | float | bool


# --- models ----------------------------------------------------------------------------------


class CreateModel(msgspec.Struct, kw_only=True):
    name: Name
    categories: Labels = []
    # What batch requests put in `body.model`; falls back to the template's model_source.uri.
    serving_name: Text = ""
    description: Annotated[str, Meta(max_length=4096)] = ""
    tags: Labels = []
    context_length: Annotated[int, Meta(ge=0, le=100_000_000)] | None = None
    # The template name a batch naming this model runs on when several are published for it.
    default_template: Label = ""


class UpdateModel(msgspec.Struct, kw_only=True):
    """A partial update (PUT, as AIBrix): a field left out keeps its value."""

    serving_name: Text | None = None
    description: Annotated[str, Meta(max_length=4096)] | None = None
    tags: Labels | None = None
    categories: Labels | None = None
    default_template: Label | None = None


class ModelOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    name: str
    categories: list[str]
    serving_name: str
    description: str
    tags: list[str]
    context_length: int | None
    default_template: str
    created_at: int


class ModelList(PageEnds, kw_only=True):
    object: str = "list"
    data: list[ModelOut]


# --- deployment templates (aibrix-reference §1.9) --------------------------------------------


class TemplateEngine(msgspec.Struct, kw_only=True):
    type: Label = "vllm"
    version: Label = ""
    image: Image = ""
    invocation: Label = ""
    serve_args: ServeArgs = []
    health_endpoint: Label = "/health"
    ready_timeout_seconds: Annotated[int, Meta(ge=1, le=7 * 86400)] = 1800
    metrics_endpoint: Label = ""
    # Our extension (CONTRACTS.md): launch command overriding `vllm serve`, with {port} and
    # {model} substituted, and the engine's port on the host.
    command: Command | None = None
    port: Annotated[int, Meta(ge=1, le=65535)] = 8000


class ModelSource(msgspec.Struct, kw_only=True):
    type: Label = "huggingface"
    uri: Word
    revision: Label = ""
    tokenizer_path: Text = ""
    chat_template_path: Text = ""
    # The name of a secret held elsewhere, never the secret itself.
    auth_secret_ref: Label = ""


GpuName = Annotated[str, Meta(min_length=1, max_length=128)]


class Accelerator(msgspec.Struct, kw_only=True):
    type: GpuName
    count: Count = 1
    # Our extension: other GPU types this template also runs on, with the same count (offers of
    # any of these families are candidates, ranked by cost per job: CONTRACTS.md).
    alternatives: Annotated[list[GpuName], Meta(max_length=8)] = []
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


class PlacementHints(msgspec.Struct, kw_only=True):
    """Our extension: figures for ranking offers by cost per job before any job has run here.

    `throughput`: GPU type → output tokens per second one machine (of `accelerator.count` such
    GPUs) reaches with this template; learned figures from finished jobs take precedence.
    """

    throughput: Annotated[
        dict[GpuName, Annotated[float, Meta(gt=0, le=10_000_000)]], Meta(max_length=16)
    ] = {}
    # Lease → engine healthy; None: the resource-manager's default (300 s).
    startup_seconds: Annotated[float, Meta(ge=0, le=86_400)] | None = None
    # Output tokens one request is expected to produce; None: the planner's default (256).
    output_tokens_per_request: Annotated[int, Meta(ge=1, le=10_000_000)] | None = None


class TemplateSpec(msgspec.Struct, kw_only=True):
    engine: TemplateEngine
    model_source: ModelSource
    accelerator: Accelerator
    parallelism: Parallelism = msgspec.field(default_factory=Parallelism)
    engine_args: Annotated[dict[ArgKey, EngineArg], Meta(max_length=64)] = {}
    quantization: Quantization | None = None
    # Empty: the endpoints every engine serves (jobs.rules.DEFAULT_ENDPOINTS).
    supported_endpoints: Annotated[list[Endpoint], Meta(max_length=32)] = []
    deployment_mode: Label = "dedicated"
    placement: PlacementHints | None = None
    # Our extension (issue 15): machines a job on this template runs on when it names none
    # (held to the operator's NEOBATCH_MAX_REPLICAS); absent: 1.
    replicas: Count | None = None


TemplateStatus = Literal["active", "deprecated", "draft"]


class CreateTemplate(msgspec.Struct, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    version: Annotated[str, Meta(min_length=1, max_length=64)] = "v1.0.0"
    # `deprecated` and `draft` versions are never chosen by default, only by exact version.
    status: TemplateStatus = "active"
    spec: TemplateSpec
    # Only with a project key, where the operator allows it: the caller's project's own
    # template, which no other project sees. An operator's template is published to all.
    private: bool = False


class UpdateTemplate(msgspec.Struct, kw_only=True):
    """What an operator may change on a stored template version: its status."""

    status: TemplateStatus


class TemplateOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model_deployment_template"
    model_id: str
    name: str
    version: str
    status: str
    spec: dict[str, Any]
    # The owning project of a private template; null for a published one.
    project: str | None
    created_at: int


class TemplateDeleted(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model_deployment_template"
    deleted: bool


class TemplateList(PageEnds, kw_only=True):
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
