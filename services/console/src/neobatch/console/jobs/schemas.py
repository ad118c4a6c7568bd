"""Job and batch bodies: AIBrix `/api/v1/jobs` (aibrix-reference §1.2) and OpenAI
`/v1/batches` (openai-batch-api §3.2).

Unknown request keys are ignored, as AIBrix does (clients written for it send extra fields).
Every response field is always present; what the job does not have yet is null.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from litestar.params import QueryParameter
from msgspec import Meta

from neobatch.common.contracts import ClientSpec, JobStatus
from neobatch.common.jsonbounds import check_stored_value
from neobatch.console.jobs.bill import Bill
from neobatch.console.jobs.window import parse_completion_window
from neobatch.console.paging import PageEnds
from neobatch.console.wire import MAX_FREE_FORM_BYTES, Endpoint, Label, Text

# AIBrix caps a job at this many replicas; the operator's NEOBATCH_MAX_REPLICAS (default
# DEFAULT_MAX_REPLICAS, shown by /api/v1/config/job-capabilities) bounds it further.
MAX_REPLICAS = 1024
DEFAULT_MAX_REPLICAS = 16
PROVIDER_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,31}$"
Provider = Annotated[str, Meta(pattern=PROVIDER_PATTERN)]
# A job's cost cap in USD: positive, and under a billion (past that it is a typo).
MaxCost = Annotated[float, Meta(gt=0, le=1_000_000_000)]
MetadataKey = Annotated[str, Meta(max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=16)]

# --- requests --------------------------------------------------------------------------------


class ResourceRequestIn(msgspec.Struct, kw_only=True):
    # Machines to run the batch on; 0 or absent: the template's default (`spec.replicas`), else
    # one (AIBrix). Above NEOBATCH_MAX_REPLICAS: 400 `replicas_above_maximum`.
    replicas: Annotated[int, Meta(ge=0, le=MAX_REPLICAS)] = 0
    # Opaque, stored for provider extensions (AIBrix provider_config): bounded in size, and
    # every integer in it must fit int64 (it is stored in MongoDB).
    provider_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.provider_config is not None:
            check_stored_value(
                self.provider_config, max_bytes=MAX_FREE_FORM_BYTES, what="provider_config"
            )


class CreateJob(msgspec.Struct, kw_only=True):
    """A job request: the AIBrix body, and what an OpenAI batch request is translated into."""

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
    metadata: Metadata = {}
    # Our extension: the provider to lease from (None = the configured default).
    provider: Provider | None = None
    # The client's own count of input lines (AIBrix), shown until validation counts them.
    request_count_total: Annotated[int, Meta(ge=0, le=10_000_000)] | None = None
    # Ours (issue 16): answer a quote (jobs/quote.py) instead of creating the job; and a cap
    # on what the job's machines may cost (refused at create when the quote is above it,
    # stopped with `budget_exceeded` when the bill reaches it).
    dry_run: bool = False
    max_cost_usd: MaxCost | None = None

    def __post_init__(self) -> None:
        # Raised as ValueError so msgspec reports it as a validation error (400).
        parse_completion_window(self.completion_window)


class RetryJob(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /api/v1/jobs/{id}/retry` (issue 18): what the retry changes; the rest is the
    original's. Unknown keys are refused: a misspelt override must not be silently dropped."""

    # NAME or NAME@VERSION; absent: the original's template (its name and version).
    model_template: (
        Annotated[str, Meta(min_length=1, max_length=193, pattern=r"^[^@]{1,128}(@[^@]{1,64})?$")]
        | None
    ) = None
    replicas: Annotated[int, Meta(ge=1, le=MAX_REPLICAS)] | None = None
    max_cost_usd: MaxCost | None = None


class ExpiresAfter(msgspec.Struct, kw_only=True):
    anchor: Literal["created_at"] = "created_at"
    seconds: Annotated[int, Meta(ge=3600, le=2_592_000)]


class AibrixExtension(msgspec.Struct, kw_only=True):
    """The part of AIBrix's `aibrix` batch extension we honour (`extra_body` in the SDK)."""

    client: ClientSpec | None = None
    # Machines to run the batch on, as the job API's `resource_request.replicas`.
    replicas: Annotated[int, Meta(ge=0, le=MAX_REPLICAS)] = 0


def max_cost(text: str | None) -> float | None:
    """`metadata["neobatch.max_cost_usd"]` as a cap (ValueError: not one)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1_000_000_000:
        raise ValueError(
            f"metadata['neobatch.max_cost_usd'] {text[:32]!r} is not a USD amount "
            "in (0, 1000000000]"
        )
    return value


class CreateBatch(msgspec.Struct, kw_only=True):
    input_file_id: Annotated[str, Meta(min_length=1, max_length=128)]
    endpoint: Endpoint
    completion_window: Annotated[str, Meta(max_length=32)] = "24h"
    # `neobatch.template_name`, `neobatch.template_version` and `neobatch.provider` pick the
    # deployment template and provider; every pair is kept as the batch's metadata.
    metadata: Metadata | None = None
    # Accepted for compatibility; outputs are kept as long as their job.
    output_expires_after: ExpiresAfter | None = None
    # `extra_body={"aibrix": {"client": {...}}}`: dispatch tuning, as on AIBrix's /v1/batches.
    aibrix: AibrixExtension | None = None

    def __post_init__(self) -> None:
        parse_completion_window(self.completion_window)
        provider = (self.metadata or {}).get("neobatch.provider")
        if provider is not None and not re.match(PROVIDER_PATTERN, provider):
            raise ValueError(f"metadata['neobatch.provider'] {provider!r} is not a provider name")
        max_cost((self.metadata or {}).get("neobatch.max_cost_usd"))


# --- both views ------------------------------------------------------------------------------


class RequestCounts(msgspec.Struct, kw_only=True):
    total: int
    completed: int
    failed: int


# --- the AIBrix job view ---------------------------------------------------------------------


class JobEvent(msgspec.Struct, kw_only=True):
    """One step of the job's timeline (aibrix-reference §1.5)."""

    id: str
    label: str
    status: str
    source: str
    at: int
    message: str


class SshEndpoint(msgspec.Struct, kw_only=True):
    host: str | None
    port: int | None
    username: str | None


class ProvisionOut(msgspec.Struct, kw_only=True):
    """The job's machine: identifiers and state only, never credentials or provider data."""

    provision_id: str
    provider: str
    status: str
    region: str
    error_message: str
    created_at: int | None
    updated_at: int | None
    # Shown to the job's owner only.
    endpoint: SshEndpoint | None


class PlacementOut(msgspec.Struct, kw_only=True):
    """Which rule chose the job's offer and the figures it used (resource_manager/ranking.py):
    `cost_per_job` (expected cost of the whole job) or `price_per_hour` (the fallback when a
    candidate's throughput or the job's output estimate is unknown)."""

    rule: str
    offer: str
    gpu_family: str
    price_per_hour: float
    candidates: int
    expected_output_tokens: int
    # Only with `cost_per_job`: tokens/s per machine ("learned" | "declared"), start-up, cost.
    throughput_tokens_per_second: float | None = None
    throughput_source: str = ""
    startup_seconds: float | None = None
    expected_cost_usd: float | None = None


class ReplicasOut(msgspec.Struct, kw_only=True):
    replicas: int


class MachineOut(msgspec.Struct, kw_only=True):
    """One machine of the job (issue 15): where it ran, at what price, how far it got."""

    provision_id: str
    provider: str
    gpu_type: str | None
    price_per_hour: float | None  # USD for the machine, as leased; null before an offer
    status: str  # the provision's: requested, provisioning, running, releasing, released, ...
    lines: int  # input lines finished on it (completed + failed), as the agent last reported


class MachinesOut(msgspec.Struct, kw_only=True):
    """The job's machines: asked for, running now, released; one item per provision."""

    requested: int
    running: int
    released: int
    items: list[MachineOut]


class JobOut(msgspec.Struct, kw_only=True):
    """The response body of every /api/v1/jobs route. Times are Unix seconds."""

    id: str
    object: str = "batch"
    status: str
    batch_id: str | None
    provision_id: str | None
    provision: ProvisionOut | None
    events: list[JobEvent]
    name: str
    endpoint: str
    model: str
    model_id: str
    model_template_name: str
    model_template_version: str
    input_dataset: str
    output_dataset: str | None
    error_dataset: str | None
    completion_window: str
    request_counts: RequestCounts
    # Summed when the batch ends (output files written), as AIBrix and OpenAI report it.
    usage: Usage
    error_code: str | None
    error_message: str | None
    metadata: dict[str, str]
    provider: str | None
    resource_request: ReplicasOut
    created_by: str
    # Every timestamp a job may carry (rules.JOB_TIMESTAMPS), then the planner's own two.
    created_at: int | None
    queued_at: int | None
    resource_preparing_at: int | None
    submitting_at: int | None
    batch_created_at: int | None
    in_progress_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancel_requested_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    resource_failed_at: int | None
    submit_failed_at: int | None
    expires_at: int | None
    updated_at: int | None
    # How the machine's offer was chosen (clouds that rent by offer); None before that.
    placement: PlacementOut | None = None
    # What the job's machines cost so far (jobs/bill.py).
    bill: Bill
    # The machines it runs on (issue 15); none before placement.
    machines: MachinesOut
    # The job's cost cap (USD), if it has one: its bill stops there (`budget_exceeded`).
    max_cost_usd: float | None = None
    # Issue 18: the job whose failed and unfinished lines this one re-runs, and the retries
    # of this job, oldest first (at most MAX_RETRIES_PER_JOB).
    retry_of: str | None = None
    retried_by: list[str] = msgspec.field(default_factory=list)


class JobList(PageEnds, kw_only=True):
    jobs: list[JobOut]


class JobEventList(msgspec.Struct, kw_only=True):
    """`GET /api/v1/jobs/{id}/events`: the job's timeline, oldest first."""

    object: str = "list"
    data: list[JobEvent]


# `GET /api/v1/jobs?status=in_progress&status=queued`: any of these statuses (each a job
# status, at most one of each).
StatusFilter = Annotated[
    list[JobStatus] | None, QueryParameter(max_items=len(JobStatus), description="job statuses")
]


class ReplicaRange(msgspec.Struct, kw_only=True):
    min_replicas: int
    max_replicas: int


class JobCapabilities(msgspec.Struct, kw_only=True):
    """What the UI needs to build a job form (aibrix-reference §1.2)."""

    resource_request: ReplicaRange
    provider: str


# --- the OpenAI batch view -------------------------------------------------------------------


class BatchError(msgspec.Struct, kw_only=True):
    code: str | None
    message: str
    param: str | None
    line: int | None


class BatchErrors(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[BatchError]


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    total_tokens: int


class BatchOut(msgspec.Struct, kw_only=True):
    """OpenAI's `Batch` object. Times are Unix seconds."""

    id: str
    object: str = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    expires_at: int | None
    failed_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str]
    model: str | None
    usage: Usage
    in_progress_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    # Ours, beside OpenAI's fields (the SDK keeps unknown fields as extras): the job's bill
    # and the machines it runs on.
    neobatch_bill: Bill
    neobatch_machines: MachinesOut


class BatchList(PageEnds, kw_only=True):
    object: str = "list"
    data: list[BatchOut]
