"""The provision state machine. Pure: given what the provider said, what happens next.

requested → booting → running → releasing → released, or → failed (then releasing →
released, so a half-made machine is still cleaned up). A provision is only forgotten once
the provider confirms the machine is gone (DESIGN rule 5).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from neobatch.common.contracts import ProvisionStatus, ResourceRequest
from neobatch.resource_manager.offers import Offer, attempts_message
from neobatch.resource_manager.providers.base import Machine, ProviderError

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
    # Cloud providers: the offer being tried now (recorded before the create call) and every
    # earlier attempt that ended without a machine, as {"offer": key, "error": text}.
    offer: Offer | None = None
    attempts: list[dict[str, str]] = []
    # Not stored: this process recorded the provision and holds its lease, so no provider call
    # was ever made for it (the ssh pool then leases without looking for an earlier lease).
    fresh: bool = False
    lease_until: datetime | None = None


class Step(msgspec.Struct, kw_only=True):
    """The outcome of one driver step."""

    status: ProvisionStatus
    provider_resource_id: str | None = None
    machine: Machine | None = None
    error_code: str = ""
    error_message: str = ""
    provider: str | None = None  # switch provider (failover)
    offer: Offer | None = None  # record the offer about to be tried
    clear_offer: bool = False
    attempts: list[dict[str, str]] | None = None
    retry_seconds: float | None = None  # None = RETRY_SECONDS


def is_past_deadline(provision: Provision, now: datetime) -> bool:
    return provision.deadline_at is not None and now >= provision.deadline_at


def after_machine(provision: Provision, machine: Machine) -> Step:
    """Where a starting provision goes once the provider describes its machine."""
    if machine.gone:
        return Step(
            status=ProvisionStatus.FAILED,
            error_code="MachineVanished",
            error_message="the machine disappeared before it was ready",
        )
    status = (
        ProvisionStatus.RUNNING if machine.ready and machine.endpoint else ProvisionStatus.BOOTING
    )
    return Step(status=status, provider_resource_id=machine.provider_resource_id, machine=machine)


def after_error(provision: Provision, error: ProviderError, now: datetime) -> Step:
    """A provider error: keep waiting if it may pass before the deadline, else fail."""
    if error.retryable and not is_past_deadline(provision, now):
        return Step(status=provision.status, error_code=error.code, error_message=error.message)
    return Step(status=ProvisionStatus.FAILED, error_code=error.code, error_message=error.message)


def deadline_step(provision: Provision) -> Step:
    return Step(
        status=ProvisionStatus.FAILED,
        error_code="ProvisionTimeout",
        error_message=f"the machine was not ready before {provision.deadline_at.isoformat() if provision.deadline_at else 'the deadline'}",
    )


def unknown_provider_step(provision: Provision, configured: tuple[str, ...]) -> Step:
    """A provision for a provider this service does not run: nothing was created."""
    if provision.status is ProvisionStatus.RELEASING:
        return Step(status=ProvisionStatus.RELEASED)
    return Step(
        status=ProvisionStatus.FAILED,
        error_code="UnknownProvider",
        error_message=f"provider {provision.provider!r} is not configured (configured: {', '.join(configured)})",
    )


def attempt_name(provision: Provision) -> str:
    """The deterministic machine name of the current attempt (id-derived, DESIGN rule 5)."""
    return f"{provision.resource_name}-{len(provision.attempts)}"


def offer_chosen(provision: Provision, offer: Offer) -> Step:
    """Record the offer before any create call, so a restart retries the same name there."""
    return Step(
        status=ProvisionStatus.CREATING, provider=offer.provider, offer=offer, retry_seconds=0
    )


def offer_refused(provision: Provision, error: ProviderError) -> Step:
    """No capacity for the current offer: remember the attempt and move to the next one."""
    key = provision.offer.key if provision.offer else "?"
    return Step(
        status=ProvisionStatus.CREATING,
        clear_offer=True,
        attempts=[*provision.attempts, {"offer": key, "error": error.message}],
        retry_seconds=0,
    )


def no_offer_left(provision: Provision) -> Step:
    return Step(
        status=ProvisionStatus.FAILED,
        error_code="NoCapacity",
        error_message=attempts_message(provision.attempts, provision.request),
    )


def broken_before_ready(machine: Machine) -> Step:
    return Step(
        status=ProvisionStatus.FAILED,
        provider_resource_id=machine.provider_resource_id,
        error_code="MachineFailed",
        error_message=f"the machine stopped before it was ready (provider status {machine.status})",
    )
