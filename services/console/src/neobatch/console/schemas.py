"""Request and response bodies.

Unknown keys are ignored, as AIBrix does (clients written for it send extra fields).
Constraints live in the types so a violation is a 400 naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from litestar.datastructures import UploadFile
from msgspec import Meta

from neobatch.common.contracts import ClientSpec
from neobatch.console.job_create import parse_completion_window

Text = Annotated[str, Meta(max_length=512)]
Label = Annotated[str, Meta(max_length=128)]
Name = Annotated[str, Meta(min_length=1, max_length=256)]
Endpoint = Annotated[str, Meta(pattern=r"^/v1/[A-Za-z0-9_./-]+$", max_length=128)]
Positive = Annotated[int, Meta(ge=1)]
PROVIDER_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"
EngineArg = str | int | float | bool


# --- models ----------------------------------------------------------------------------------


class CreateModel(msgspec.Struct, kw_only=True):
    name: Name
    categories: list[Label] = []
    # What batch requests put in `body.model`; falls back to the template's model_source.uri.
    serving_name: Text = ""
    description: Annotated[str, Meta(max_length=4096)] = ""
    tags: list[Label] = []
    context_length: Annotated[int, Meta(ge=0)] | None = None


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
    serve_args: list[Text] = []
    health_endpoint: Label = "/health"
    ready_timeout_seconds: Positive = 1800
    metrics_endpoint: Label = ""
    # Our extension (CONTRACTS.md): launch command overriding `vllm serve`, with {port} and
    # {model} substituted, and the engine's port on the host.
    command: list[Text] | None = None
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
    count: Positive = 1
    vram_gb: Annotated[int, Meta(ge=0)] | None = None
    interconnect: Label = ""
    sku_hint: Label = ""


class Parallelism(msgspec.Struct, kw_only=True):
    tp: Positive = 1
    pp: Positive = 1
    dp: Positive = 1
    ep: Positive = 1
    sp: Positive = 1
    cp: Positive = 1


class Quantization(msgspec.Struct, kw_only=True):
    weight: Label = ""
    kv_cache: Label = ""
    weights_artifact_uri: Text = ""


class TemplateSpec(msgspec.Struct, kw_only=True):
    engine: TemplateEngine
    model_source: ModelSource
    accelerator: Accelerator
    parallelism: Parallelism = msgspec.field(default_factory=Parallelism)
    engine_args: dict[Label, EngineArg] = {}
    quantization: Quantization | None = None
    # Empty: the endpoints every engine serves (job_create.DEFAULT_ENDPOINTS).
    supported_endpoints: list[Endpoint] = []
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


# --- files -----------------------------------------------------------------------------------


@dataclass
class UploadForm:
    # A dataclass, because Litestar fills multipart forms into dataclasses with UploadFile.
    file: UploadFile
    purpose: str = "batch"


class FileOut(msgspec.Struct, kw_only=True):
    """OpenAI's file object."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"


class FileList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[FileOut]
    has_more: bool
    first_id: str | None
    last_id: str | None


class FileDeleted(msgspec.Struct, kw_only=True):
    id: str
    object: str = "file"
    deleted: bool = True


# --- jobs (aibrix-reference §1.2) ------------------------------------------------------------


class ResourceRequestIn(msgspec.Struct, kw_only=True):
    # 0 or absent means one replica (AIBrix).
    replicas: Annotated[int, Meta(ge=0, le=1024)] = 0
    # Opaque, stored for provider extensions (AIBrix provider_config).
    provider_config: dict[str, Any] | None = None


Provider = Annotated[str, Meta(pattern=PROVIDER_PATTERN)]
MetadataKey = Annotated[str, Meta(max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=512)]


class CreateJob(msgspec.Struct, kw_only=True):
    input_dataset: Annotated[str, Meta(min_length=1, max_length=128)]
    endpoint: Endpoint
    completion_window: Annotated[str, Meta(max_length=32)] = "24h"
    name: Text = ""
    model_id: Label = ""
    model_template_name: Label = ""
    model_template_version: Label = ""
    resource_request: ResourceRequestIn | None = None
    # Smart-client tuning (AIBrix `client`): range-checked here, before anything is leased
    # (AIBrix checks it only when the batch is submitted, after a machine was paid for).
    client: ClientSpec | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=16)] = {}
    # Our extension: the provider to lease from (None = the configured default).
    provider: Provider | None = None
    # The client's own count of input lines (AIBrix), shown until validation counts them.
    request_count_total: Annotated[int, Meta(ge=0, le=10_000_000)] | None = None

    def __post_init__(self) -> None:
        # Raised as ValueError so msgspec reports it as a validation error (400).
        parse_completion_window(self.completion_window)


# --- OpenAI batches (openai-batch-api §3.2) --------------------------------------------------


class ExpiresAfter(msgspec.Struct, kw_only=True):
    anchor: Literal["created_at"] = "created_at"
    seconds: Annotated[int, Meta(ge=3600, le=2_592_000)]


class AibrixExtension(msgspec.Struct, kw_only=True):
    """The part of AIBrix's `aibrix` batch extension we honour (`extra_body` in the SDK)."""

    client: ClientSpec | None = None


class CreateBatch(msgspec.Struct, kw_only=True):
    input_file_id: Annotated[str, Meta(min_length=1, max_length=128)]
    endpoint: Endpoint
    completion_window: Annotated[str, Meta(max_length=32)] = "24h"
    # `neobatch.template_name`, `neobatch.template_version` and `neobatch.provider` pick the
    # deployment template and provider; every pair is kept as the batch's metadata.
    metadata: Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=16)] | None = None
    # Accepted for compatibility; outputs are kept as long as their job.
    output_expires_after: ExpiresAfter | None = None
    # `extra_body={"aibrix": {"client": {...}}}`: dispatch tuning, as on AIBrix's /v1/batches.
    aibrix: AibrixExtension | None = None

    def __post_init__(self) -> None:
        parse_completion_window(self.completion_window)
        provider = (self.metadata or {}).get("neobatch.provider")
        if provider is not None and not re.match(PROVIDER_PATTERN, provider):
            raise ValueError(f"metadata['neobatch.provider'] {provider!r} is not a provider name")


# --- errors ----------------------------------------------------------------------------------


class ErrorBody(msgspec.Struct):
    code: str
    message: str
