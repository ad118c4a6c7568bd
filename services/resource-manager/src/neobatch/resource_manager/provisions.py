"""The provision state machine. Pure: given what the provider said, what happens next.

requested → booting → running → releasing → released, or → failed (then releasing → released,
so a half-made machine is still cleaned up); a running provision whose machine dies is lost.
Providers that rent by offer pass through creating: the offer is recorded before any create,
a refused offer moves on to the next, and the machine is named per attempt (DESIGN rule 5).
A provision is only forgotten once the provider confirms the machine is gone.

Each function returns a Decision: the next status, what to record, and the events the change
causes; `store.save_decision` writes it and its events in one transaction (DESIGN rule 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from neobatch.common.contracts import (
    Event,
    ProvisionFailed,
    ProvisionLost,
    ProvisionReleased,
    ProvisionRunning,
    ProvisionStatus,
    ResourceRequest,
)
from neobatch.resource_manager.offers import Offer, attempts_message
from neobatch.resource_manager.providers.base import (
    Attempt,
    Machine,
    NoCapacity,
    OwnedMachine,
    ProviderError,
)
from neobatch.resource_manager.ranking import Placement

# Statuses the driver still has work to do in.
ACTIVE = frozenset(
    {
        ProvisionStatus.REQUESTED,
        ProvisionStatus.CREATING,
        ProvisionStatus.BOOTING,
        ProvisionStatus.RELEASING,
    }
)
# Statuses from which a release request starts releasing.
RELEASABLE = frozenset(
    {
        ProvisionStatus.REQUESTED,
        ProvisionStatus.CREATING,
        ProvisionStatus.BOOTING,
        ProvisionStatus.RUNNING,
        ProvisionStatus.FAILED,
        ProvisionStatus.LOST,
    }
)
# How soon to look again at a provision that is waiting (capacity, boot).
RETRY_SECONDS = 1.0


class Provision(msgspec.Struct, kw_only=True):
    id: str
    job_id: str
    status: ProvisionStatus
    version: int = 0
    provider: str
    resource_name: str
    request: ResourceRequest
    provider_resource_id: str | None = None
    deadline_at: datetime | None = None
    # Providers that rent by offer: the offer being tried now (recorded before the create call)
    # and every earlier attempt that ended without a machine, as {"offer": key, "error": text}.
    offer: Offer | None = None
    attempts: list[dict[str, str]] = []
    # Not stored: this process recorded the provision and holds its lease, so no provider call
    # was ever made for it (a provider then creates without looking for an earlier machine).
    fresh: bool = False
    lease_until: datetime | None = None
    # When the provider accepted the create (the bill's start), once recorded.
    leased_at: datetime | None = None


class Decision(msgspec.Struct, kw_only=True):
    """The outcome of one step: the next status, what to record, and the events it causes."""

    status: ProvisionStatus
    provider_resource_id: str | None = None
    machine: Machine | None = None
    error_code: str = ""
    error_message: str = ""
    provider: str | None = None  # switch provider (failover)
    offer: Offer | None = None  # record the offer about to be tried
    placement: Placement | None = None  # why that offer (ranking.py), recorded with it
    clear_offer: bool = False
    attempts: list[dict[str, str]] | None = None
    retry_seconds: float = RETRY_SECONDS  # when an active provision is looked at again
    events: list[Event] = []


def provider_for(request: ResourceRequest, provisioners: Sequence[str]) -> str:
    """The job's provider, else the first configured (a provider not configured is still
    recorded; its first step fails it with the reason)."""
    return request.provider or provisioners[0]


def attempt_name(provision: Provision) -> str:
    """The deterministic machine name of the current attempt (id-derived, DESIGN rule 5)."""
    return f"{provision.resource_name}-{len(provision.attempts)}"


def attempt_of(provision: Provision) -> Attempt:
    return Attempt(
        provision_id=provision.id,
        name=attempt_name(provision),
        offer=provision.offer,
        fresh=provision.fresh,
    )


def is_past_deadline(provision: Provision, now: datetime) -> bool:
    return provision.deadline_at is not None and now >= provision.deadline_at


def after_machine(provision: Provision, machine: Machine, now: datetime) -> Decision:
    """Where a starting provision goes once the provider describes its machine."""
    if machine.broken and not machine.ready:
        return _failed(
            provision,
            "MachineFailed",
            f"the machine stopped before it was ready (provider status {machine.status})",
            now,
            provider_resource_id=machine.provider_resource_id,
        )
    if machine.gone:
        return _failed(
            provision, "MachineVanished", "the machine disappeared before it was ready", now
        )
    status = (
        ProvisionStatus.RUNNING if machine.ready and machine.endpoint else ProvisionStatus.BOOTING
    )
    return _decided(
        provision,
        Decision(status=status, provider_resource_id=machine.provider_resource_id, machine=machine),
        now,
    )


def after_error(provision: Provision, error: ProviderError, now: datetime) -> Decision:
    """A provider error while starting.

    No capacity for a recorded offer: remember the attempt and try the next offer at once.
    Otherwise keep waiting if the error may pass before the deadline (a busy ssh pool, a 5xx),
    else fail.
    """
    if (
        isinstance(error, NoCapacity)
        and provision.offer is not None
        and provision.provider_resource_id is None
    ):
        return _decided(
            provision,
            Decision(
                status=ProvisionStatus.CREATING,
                clear_offer=True,
                attempts=[
                    *provision.attempts,
                    {"offer": provision.offer.key, "error": error.message},
                ],
                retry_seconds=0,
            ),
            now,
        )
    status = (
        provision.status
        if error.retryable and not is_past_deadline(provision, now)
        else ProvisionStatus.FAILED
    )
    return _decided(
        provision, Decision(status=status, error_code=error.code, error_message=error.message), now
    )


def deadline_passed(provision: Provision, now: datetime) -> Decision:
    deadline = provision.deadline_at.isoformat() if provision.deadline_at else "the deadline"
    return _failed(
        provision,
        "ProvisionTimeout",
        f"the machine was not ready before {deadline}",
        now,
        provider_resource_id=provision.provider_resource_id,
    )


def unknown_provider(provision: Provision, configured: Sequence[str], now: datetime) -> Decision:
    """A provision for a provider this service does not run: nothing was created."""
    if provision.status is ProvisionStatus.RELEASING:
        return _decided(provision, Decision(status=ProvisionStatus.RELEASED), now)
    return _failed(
        provision,
        "UnknownProvider",
        f"provider {provision.provider!r} is not configured (configured: {', '.join(configured)})",
        now,
    )


def offer_chosen(
    provision: Provision, offer: Offer, now: datetime, placement: Placement | None = None
) -> Decision:
    """Record the offer before any create call, so a restart retries the same name there;
    with it, the rule that chose it and its figures (the job view shows them)."""
    return _decided(
        provision,
        Decision(
            status=ProvisionStatus.CREATING,
            provider=offer.provider,
            offer=offer,
            placement=placement,
            retry_seconds=0,
        ),
        now,
    )


def no_offer(
    provision: Provision, no_gpu_type: Sequence[str], providers_asked: int, now: datetime
) -> Decision:
    """No untried offer anywhere: NoGpuType when every provider asked sells no such GPU and
    nothing was tried, else NoCapacity listing every attempt."""
    if no_gpu_type and not provision.attempts and len(no_gpu_type) == providers_asked:
        return _failed(provision, "NoGpuType", "; ".join(no_gpu_type), now)
    return _failed(
        provision, "NoCapacity", attempts_message(provision.attempts, provision.request), now
    )


def after_release(
    provision: Provision, provider_resource_id: str | None, gone: bool, now: datetime
) -> Decision:
    """Released once the provider confirms the machine is gone (or none was ever made)."""
    status = ProvisionStatus.RELEASED if gone else ProvisionStatus.RELEASING
    return _decided(
        provision, Decision(status=status, provider_resource_id=provider_resource_id), now
    )


def release_failed(
    provision: Provision, provider_resource_id: str | None, error: ProviderError, now: datetime
) -> Decision:
    """Keep releasing (DESIGN rule 5): the machine may still exist."""
    return _decided(
        provision,
        Decision(
            status=ProvisionStatus.RELEASING,
            provider_resource_id=provider_resource_id,
            error_code=error.code,
            error_message=error.message,
        ),
        now,
    )


def orphans(
    machines: Sequence[OwnedMachine], live: Sequence[Provision], provider: str
) -> list[OwnedMachine]:
    """The machines of `provider` that no live provision owns, by recorded id or by the name of
    its current attempt (a machine being created has no id recorded yet)."""
    names: set[str] = set()
    ids: set[str] = set()
    for provision in live:
        if provision.provider_resource_id:
            ids.add(provision.provider_resource_id)
        offer_provider = provision.offer.provider if provision.offer else None
        if provider in (provision.provider, offer_provider):
            names.add(attempt_name(provision))
    return [m for m in machines if m.name not in names and m.provider_resource_id not in ids]


def lost(provision: Provision, machine: Machine, now: datetime) -> Decision | None:
    """A running provision whose machine is gone or broken is lost; None while it serves."""
    if not (machine.gone or machine.broken):
        return None
    # Named, so a job that fails for want of machines says which one it lost.
    resource = f"{provision.provider} machine {provision.provider_resource_id}"
    reason = (
        f"{resource} no longer exists at the provider"
        if machine.gone
        else f"{resource} stopped serving (provider status {machine.status})"
    )
    return _decided(
        provision,
        Decision(status=ProvisionStatus.LOST, error_code="MachineLost", error_message=reason),
        now,
    )


def release_of_unknown(provision_id: str, job_id: str, now: datetime) -> list[Event]:
    """A release that arrived before its request: recorded as released, so the request finds
    it settled and no machine is ever made; the job hears its machine is released."""
    return [ProvisionReleased(provision_id=provision_id, job_id=job_id, occurred_at=now)]


def _failed(
    provision: Provision,
    code: str,
    message: str,
    now: datetime,
    *,
    provider_resource_id: str | None = None,
) -> Decision:
    decision = Decision(
        status=ProvisionStatus.FAILED,
        provider_resource_id=provider_resource_id,
        error_code=code,
        error_message=message,
    )
    return _decided(provision, decision, now)


def _decided(provision: Provision, decision: Decision, now: datetime) -> Decision:
    decision.events = _events(provision, decision, now)
    return decision


def _events(provision: Provision, decision: Decision, now: datetime) -> list[Event]:
    """What a transition tells the rest of the system; a step that stays says nothing."""
    ids = {"provision_id": provision.id, "job_id": provision.job_id, "occurred_at": now}
    match decision.status:
        case status if status is provision.status:
            return []
        case ProvisionStatus.RUNNING if decision.machine and decision.machine.endpoint:
            offer = provision.offer
            price = offer.price_per_hour if offer else decision.machine.price_per_hour
            return [
                ProvisionRunning(
                    **ids,
                    provider=provision.provider,
                    endpoint=decision.machine.endpoint,
                    # Recorded with the first answer (store.lease_fields): then, or this step.
                    leased_at=provision.leased_at or now,
                    price_per_hour=price or 0.0,
                )
            ]
        case ProvisionStatus.FAILED:
            return [ProvisionFailed(**ids, code=decision.error_code, reason=decision.error_message)]
        case ProvisionStatus.LOST:
            return [ProvisionLost(**ids, reason=decision.error_message)]
        case ProvisionStatus.RELEASED:
            return [ProvisionReleased(**ids)]
    return []
