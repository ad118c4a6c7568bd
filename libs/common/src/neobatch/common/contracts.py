"""Event contracts: one msgspec Struct per subject (DESIGN.md "Services").

Every event carries `event_id` (also its `Nats-Msg-Id`, so JetStream drops re-publishes),
a schema `version` and `occurred_at`. Integrations subscribe to these directly, so fields
are only ever added with defaults; a breaking change gets a new `version`.
Secrets never travel in events: an SSH target names the key file setting, not the key.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar

import msgspec

from neobatch.common.clock import utcnow
from neobatch.common.ids import new_id


class JobStatus(StrEnum):
    QUEUED = "queued"
    RESOURCE_PREPARING = "resource_preparing"
    SUBMITTING = "submitting"
    BATCH_CREATED = "batch_created"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    RESOURCE_FAILED = "resource_failed"
    SUBMIT_FAILED = "submit_failed"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


TERMINAL_JOB_STATUSES = frozenset(
    {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.EXPIRED,
        JobStatus.CANCELLED,
        JobStatus.RESOURCE_FAILED,
        JobStatus.SUBMIT_FAILED,
    }
)


class BatchStatus(StrEnum):
    """OpenAI's eight batch states."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_BATCH_STATUSES


TERMINAL_BATCH_STATUSES = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)


class ProvisionStatus(StrEnum):
    REQUESTED = "requested"
    CREATING = "creating"
    BOOTING = "booting"
    RUNNING = "running"
    RELEASING = "releasing"
    RELEASED = "released"
    FAILED = "failed"
    LOST = "lost"


class Event(msgspec.Struct, kw_only=True, frozen=True):
    """Base of every event. `subject` is the suffix after the namespace prefix."""

    subject: ClassVar[str] = ""
    event_id: str = msgspec.field(default_factory=lambda: new_id("evt"))
    version: int = 1
    occurred_at: datetime = msgspec.field(default_factory=utcnow)


class RequestCounts(msgspec.Struct, frozen=True):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Usage(msgspec.Struct, frozen=True):
    """Token usage summed over a batch's successful responses (OpenAI `usage`)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    # Of input_tokens, those the engine's prefix cache served (vLLM's
    # `usage.prompt_tokens_details.cached_tokens`; OpenAI's `input_tokens_details`).
    cached_tokens: int = 0


class ResourceRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a job needs from a machine; derived from its deployment template."""

    accelerator_type: str
    accelerator_count: int = 1
    replicas: int = 1
    provider: str | None = None  # a job may name its provider; None = configured default
    # Offer ranking (resource_manager/ranking.py). Other GPU types the template runs on (same
    # count): offers of any of these families are candidates.
    accelerator_alternatives: list[str] = []
    # Whose throughput figures apply (the template's name) and what the template declares:
    # GPU family → output tokens/s per machine, start-up seconds (None: the default).
    template_key: str = ""
    throughput: dict[str, float] = {}
    startup_seconds: float | None = None
    # The job's expected output tokens (documented approximation, planner/policy.py); 0: unknown.
    expected_output_tokens: int = 0


class SshEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    host: str
    port: int
    username: str
    # Host key reported by the provider (ssh pool: from configuration), pinned by the agent.
    host_public_key: str | None = None


class EngineSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How the runtime-agent starts and reaches the inference engine."""

    serving_name: str
    model_uri: str
    engine_type: str = "vllm"
    image: str | None = None
    command: list[str] | None = None
    serve_args: list[str] = []
    engine_args: dict[str, Any] = {}
    # The template's `parallelism` block (tp, pp, dp): vLLM's *-parallel-size flags.
    parallelism: dict[str, int] = {}
    port: int = 8000
    health_endpoint: str = "/health"
    ready_timeout_seconds: float = 1800.0


class RetryPolicySpec(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Per-request retries (AIBrix `client.retry_policy`): unset fields keep the agent's default."""

    max_retries: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    base_delay_seconds: Annotated[float, msgspec.Meta(ge=0, le=600)] | None = None
    max_delay_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] | None = None
    # Accepted for AIBrix compatibility; the agent has one endpoint per batch, so no budget.
    no_endpoint_max_retries: Annotated[int, msgspec.Meta(ge=0)] | None = None


class ClientSpec(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """How the agent drives the engine (AIBrix's job `client` block, same names and ranges).

    Presence-aware as in AIBrix: None means "the agent's configured default", never 0.
    """

    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    request_timeout_seconds: Annotated[float, msgspec.Meta(ge=1, le=86400)] | None = None
    adaptive_concurrency: bool | None = None
    adaptive_max_factor: Annotated[float, msgspec.Meta(ge=1, le=1024)] | None = None
    adaptive_healthy_window: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None
    adaptive_additive_increase: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    retry_policy: RetryPolicySpec | None = None
    # neobatch's own: the largest engine response body kept, in bytes; it can only lower the
    # agent's `NEOBATCH_MAX_RESPONSE_BYTES` (a larger value is the operator's cap).
    max_response_bytes: Annotated[int, msgspec.Meta(ge=1024, le=16 * 1024 * 1024)] | None = None


class JobQueued(Event, frozen=True, kw_only=True):
    subject: ClassVar[str] = "job.queued"
    job_id: str


class JobCancelRequested(Event, frozen=True, kw_only=True):
    subject: ClassVar[str] = "job.cancel_requested"
    job_id: str


class JobStatusChanged(Event, frozen=True, kw_only=True):
    """The public integration feed: one event per job transition (docs/events.md)."""

    subject: ClassVar[str] = "job.status_changed"
    job_id: str
    old_status: str | None
    new_status: str
    reason: str = ""
    # The job document's `version` once this change is written: strictly increasing per job
    # (with gaps: progress updates bump it too), so a subscriber restores a job's order by it.
    # 0 on events written before the field existed.
    job_version: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description="The job's version after this change: increases with every change "
            "of the job, so sorting a job's events by it restores their order (0: unknown).",
        ),
    ] = 0


class ProvisionRequested(Event, frozen=True, kw_only=True):
    subject: ClassVar[str] = "provision.requested"
    provision_id: str
    job_id: str
    resource: ResourceRequest
    deadline_at: datetime | None = None


class ProvisionRunning(Event, frozen=True, kw_only=True):
    subject: ClassVar[str] = "provision.running"
    provision_id: str
    job_id: str
    provider: str
    endpoint: SshEndpoint
    # The lease (the bill's start and price: `common.billing`), for a job's cost cap.
    leased_at: datetime | None = None
    price_per_hour: float = 0.0


class ProvisionFailed(Event, frozen=True, kw_only=True):
    subject: ClassVar[str] = "provision.failed"
    provision_id: str
    job_id: str
    code: str
    reason: str


class ProvisionLost(Event, frozen=True, kw_only=True):
    subject: ClassVar[str] = "provision.lost"
    provision_id: str
    job_id: str
    reason: str


class ProvisionReleaseRequested(Event, frozen=True, kw_only=True):
    subject: ClassVar[str] = "provision.release_requested"
    provision_id: str
    job_id: str
    reason: str = ""


class ProvisionReleased(Event, frozen=True, kw_only=True):
    subject: ClassVar[str] = "provision.released"
    provision_id: str
    job_id: str


class BatchRequested(Event, frozen=True, kw_only=True):
    subject: ClassVar[str] = "batch.requested"
    batch_id: str
    job_id: str
    provision_id: str
    input_file_id: str
    endpoint: str
    owner: str = ""
    target: SshEndpoint
    engine: EngineSpec
    expires_at: datetime | None = None
    # The provider that leased the machine ("ssh", "runpod", "lambdaCloud"): it decides how
    # the engine is launched (template command, `vllm serve`, `docker run`).
    runtime: str = "ssh"
    client: ClientSpec = ClientSpec()
    # Machines the job asked for (issue 15): the planner publishes one `batch.requested` per
    # machine as each comes up (same batch_id, that machine's provision_id; event id
    # deterministic per (batch_id, provision_id)). The first creates the batch, each later one
    # adds its machine; the agent sizes the batch's chunks with it.
    replicas: int = 1


class BatchCancelRequested(Event, frozen=True, kw_only=True):
    subject: ClassVar[str] = "batch.cancel_requested"
    batch_id: str
    job_id: str
    # "" (the user cancelled) or "budget_exceeded" (the job's cost cap: the batch ends `failed`
    # and its unsent lines are `budget_exceeded` in the error file).
    reason: str = ""


class BatchStatusReported(Event, frozen=True, kw_only=True):
    """Progress of a running batch (`batch.status`)."""

    subject: ClassVar[str] = "batch.status"
    batch_id: str
    job_id: str
    status: BatchStatus
    request_counts: RequestCounts = RequestCounts()
    usage: Usage = Usage()
    # provision_id -> lines finished on that machine (completed + failed); request_counts stay
    # the whole batch's.
    lines_by_machine: dict[str, int] = {}


class BatchMachineDone(Event, frozen=True, kw_only=True):
    """Nothing more will run on this machine for this batch: release it now."""

    subject: ClassVar[str] = "batch.machine_done"
    batch_id: str
    job_id: str
    provision_id: str
    # no_work_left | batch_ended | engine_failed | machine_unreachable
    reason: str
    # What this machine recorded.
    lines_completed: int = 0
    lines_failed: int = 0


class BatchMachineRemoved(Event, frozen=True, kw_only=True):
    """The planner saw this machine lost, failed or released: stop its run, free its chunks."""

    subject: ClassVar[str] = "batch.machine_removed"
    batch_id: str
    job_id: str
    provision_id: str
    reason: str = ""


class BatchMachineWanted(Event, frozen=True, kw_only=True):
    """Lines are left and no machine of the batch is running: lease one (or end the job).

    Sent by the batch run when every machine has ended while work came back after they
    looked for it (a chunk freed late: its machine lost while an agent crash held it)."""

    subject: ClassVar[str] = "batch.machine_wanted"
    batch_id: str
    job_id: str
    lines_left: int = 0


class BatchTerminal(Event, frozen=True, kw_only=True):
    subject: ClassVar[str] = "batch.terminal"
    batch_id: str
    job_id: str
    status: BatchStatus
    request_counts: RequestCounts = RequestCounts()
    usage: Usage = Usage()
    output_file_id: str | None = None
    error_file_id: str | None = None
    error_code: str = ""
    error_message: str = ""
    # Seconds this run spent sending requests (the resource-manager learns throughput from
    # usage.output_tokens / dispatch_seconds); 0 when nothing was sent.
    dispatch_seconds: float = 0.0
    # The run's first dispatch pass began / its last one ended (the bill's idle time); None: no
    # request was dispatched by the run that ended the batch.
    dispatch_started_at: datetime | None = None
    dispatch_ended_at: datetime | None = None


ALL_EVENTS: tuple[type[Event], ...] = (
    JobQueued,
    JobCancelRequested,
    JobStatusChanged,
    ProvisionRequested,
    ProvisionRunning,
    ProvisionFailed,
    ProvisionLost,
    ProvisionReleaseRequested,
    ProvisionReleased,
    BatchRequested,
    BatchCancelRequested,
    BatchStatusReported,
    BatchMachineDone,
    BatchMachineRemoved,
    BatchMachineWanted,
    BatchTerminal,
)


def encode_event(event: Event) -> bytes:
    return msgspec.json.encode(event)


E = TypeVar("E", bound=Event)


def decode_event(data: bytes, kind: type[E]) -> E:
    return msgspec.json.decode(data, type=kind)
