"""Planning rules: template → what to lease and how to run the engine. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import msgspec

from neobatch.common.contracts import ClientSpec, EngineSpec, ResourceRequest
from neobatch.common.costing import DEFAULT_OUTPUT_TOKENS_PER_REQUEST

DEFAULT_ENGINE_PORT = 8000
DEFAULT_READY_TIMEOUT_SECONDS = 1800.0

# Batch failures that mean the batch never started (machine unusable, engine never
# healthy): AIBrix reports these as submit_failed, not as a failed batch.
# Batch error codes meaning the engine never ran (the job ends `submit_failed`): the machine
# could not be reached, cannot run the engine (no Docker / NVIDIA runtime: engine_launch_failed),
# the launch itself failed or names an engine without a built-in launch, or it never got healthy.
SUBMIT_FAILURE_CODES = frozenset(
    {
        "ssh_unreachable",
        "engine_launch_failed",
        "engine_start_failed",
        "engine_unsupported",
        "engine_not_ready",
    }
)


# Output tokens a request is expected to produce when the template declares none
# (`placement.output_tokens_per_request`; default `costing.DEFAULT_OUTPUT_TOKENS_PER_REQUEST`).
# A documented approximation for ranking offers: what reaches the planner is the validated
# request count, not each line's `max_tokens` (a quote reads those: console jobs/quote.py).


def expected_output_tokens(template_spec: dict[str, Any], request_count: int) -> int:
    """The job's expected output: request count times the template's per-request figure."""
    hints = template_spec.get("placement") or {}
    per_request = hints.get("output_tokens_per_request") or DEFAULT_OUTPUT_TOKENS_PER_REQUEST
    return max(0, request_count) * int(per_request)


def resource_request(
    template_spec: dict[str, Any],
    replicas: int,
    provider: str | None,
    *,
    template_key: str = "",
    request_count: int = 0,
) -> ResourceRequest:
    accelerator = template_spec.get("accelerator") or {}
    hints = template_spec.get("placement") or {}
    startup = hints.get("startup_seconds")
    machines = max(1, replicas)
    # Each machine of a job runs about its share of the requests: offers are ranked by the
    # cost of that share (issue 15), so start-up weighs more when the work is split wider.
    share = -(-max(0, request_count) // machines)
    return ResourceRequest(
        accelerator_type=str(accelerator.get("type", "")),
        accelerator_count=int(accelerator.get("count", 1) or 1),
        replicas=machines,
        provider=provider or None,
        accelerator_alternatives=[str(a) for a in accelerator.get("alternatives") or []],
        template_key=template_key,
        throughput={str(k): float(v) for k, v in (hints.get("throughput") or {}).items()},
        startup_seconds=None if startup is None else float(startup),
        expected_output_tokens=expected_output_tokens(template_spec, share),
    )


def engine_spec(template_spec: dict[str, Any], serving_name: str) -> EngineSpec:
    engine = template_spec.get("engine") or {}
    source = template_spec.get("model_source") or {}
    model_uri = str(source.get("uri") or serving_name)
    return EngineSpec(
        serving_name=serving_name or model_uri,
        model_uri=model_uri,
        engine_type=str(engine.get("type") or "vllm"),
        image=engine.get("image") or None,
        command=list(engine["command"]) if engine.get("command") else None,
        serve_args=[str(a) for a in engine.get("serve_args") or []],
        engine_args=dict(template_spec.get("engine_args") or {}),
        parallelism={
            str(k): int(v)
            for k, v in (template_spec.get("parallelism") or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        },
        port=int(engine.get("port") or DEFAULT_ENGINE_PORT),
        health_endpoint=str(engine.get("health_endpoint") or "/health"),
        ready_timeout_seconds=float(
            engine.get("ready_timeout_seconds") or DEFAULT_READY_TIMEOUT_SECONDS
        ),
    )


def client_spec(client: dict[str, Any] | None, template_spec: dict[str, Any]) -> ClientSpec:
    """The job's `client` block, with the template's request timeout when the job sets none.

    The console validated the block at creation; a document that no longer decodes (written
    by an older version) falls back to the agent's defaults rather than failing the job.
    """
    try:
        spec = msgspec.convert(client or {}, ClientSpec)
    except msgspec.ValidationError:
        spec = ClientSpec()
    engine = template_spec.get("engine") or {}
    template_timeout = engine.get("request_timeout_seconds")
    if spec.request_timeout_seconds is None and isinstance(template_timeout, int | float):
        spec = msgspec.structs.replace(spec, request_timeout_seconds=float(template_timeout))
    return spec


def provision_id_for(job_id: str, attempt: int = 1) -> str:
    """Deterministic, so a replayed job.queued can never ask for a second machine."""
    return f"prov_{job_id.removeprefix('job_')}_{attempt}"


def provision_attempt(provision_id: str) -> int:
    """The attempt number `provision_id_for` put in the id."""
    return int(provision_id.rsplit("_", 1)[1])


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds on the planner's waits (DESIGN rule 4) and retries."""

    # The resource-manager fails a provision at its deadline; the planner's own deadline
    # adds a grace period and only fires when the resource-manager never answered.
    provisioning_seconds: float = 1200.0
    grace_seconds: float = 60.0
    # A running batch past its completion window that the agent never reported expired.
    expiry_grace_seconds: float = 120.0
    # A cancel the agent or resource-manager never confirmed.
    cancel_seconds: float = 300.0
    # Machines a job may use in all: a lost machine is replaced until this many were tried.
    max_provision_attempts: int = 3
    # Machines one project may hold at once (0: no limit); its further jobs wait queued.
    max_machines_per_project: int = 0
    # A capped job begins stopping this long before its bill reaches the cap (planner/budget.py).
    budget_stop_seconds: float = 30.0


# --- the fair queue ------------------------------------------------------------------------
# Which queued job provisions next is decided by project, not by global age: the project
# holding the fewest machines goes first, and among equals the one whose oldest job waited
# longest. A project's own jobs keep their queue order. So one project's 500 queued jobs hold
# back another project's first job by at most one provisioning slot, and a project at its
# machine quota waits (its jobs stay queued) while the others go on.


class Queued(Protocol):
    @property
    def created_at(self) -> datetime | None: ...
    @property
    def replicas(self) -> int: ...


J = TypeVar("J", bound=Queued)
_NEVER = datetime.min.replace(tzinfo=UTC)


def projects_to_consider(
    heads: Mapping[str, datetime | None], in_use: Mapping[str, int], limit: int
) -> list[str]:
    """The `limit` projects (of those with queued jobs, each with its oldest job's time) whose
    jobs a pass looks at: fewest machines held first, then the longest waiting."""
    order = sorted(heads, key=lambda p: (in_use.get(p, 0), _aware(heads[p]), p))
    return order[:limit]


def choose_next(
    queued_by_project: Mapping[str, Sequence[J]],
    in_use: Mapping[str, int],
    limit: int,
    *,
    max_machines: int = 0,
    quotas: Mapping[str, int] | None = None,
) -> list[J]:
    """Up to `limit` queued jobs in the order they should take provisioning slots.

    `queued_by_project` holds each project's queued jobs, oldest first; `in_use` the machines
    each project holds (or is being given). `max_machines` (0: none) caps any project's
    machines, `quotas` overrides it per project. Every prefix of the answer is fair, so the
    caller may start only as many as it has slots for.
    """
    held = dict(in_use)
    next_index = dict.fromkeys(queued_by_project, 0)
    chosen: list[J] = []
    while len(chosen) < limit:
        best: tuple[Any, ...] | None = None
        for project, jobs in queued_by_project.items():
            i = next_index[project]
            if i >= len(jobs):
                continue
            job = jobs[i]
            if _over(project, held.get(project, 0) + job.replicas, max_machines, quotas):
                continue  # at its quota: waits queued, and its later jobs wait behind it
            rank = (held.get(project, 0), _aware(job.created_at), project)
            if best is None or rank < best[0]:
                best = (rank, project, job)
        if best is None:
            break
        _, project, job = best
        chosen.append(job)
        next_index[project] += 1
        held[project] = held.get(project, 0) + job.replicas
    return chosen


def quota_prefix(
    placing: Sequence[tuple[str, int]],
    in_use: Mapping[str, int],
    *,
    max_machines: int = 0,
    quotas: Mapping[str, int] | None = None,
) -> int:
    """How many of `placing` (each a project and the machines it is about to be given, 0 for
    one given none), in order, fit their projects' machine quotas: the planner's check at the
    moment of writing, against the machines `in_use` as that write's transaction reads them."""
    held = dict(in_use)
    for i, (project, machines) in enumerate(placing):
        if machines and _over(project, held.get(project, 0) + machines, max_machines, quotas):
            return i
        held[project] = held.get(project, 0) + machines
    return len(placing)


def _over(project: str, machines: int, default: int, quotas: Mapping[str, int] | None) -> bool:
    """Whether holding `machines` puts `project` over its quota (its override, else the
    default; 0: no limit)."""
    cap = (quotas or {}).get(project, default)
    return cap > 0 and machines > cap


def _aware(at: datetime | None) -> datetime:
    """Comparable times: a missing one sorts first, naive ones (from BSON) are UTC."""
    if at is None:
        return _NEVER
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
