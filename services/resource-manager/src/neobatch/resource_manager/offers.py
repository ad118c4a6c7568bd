"""Offer matching rules. Pure: no I/O."""

from __future__ import annotations

import msgspec

from neobatch.common.contracts import ResourceRequest
from neobatch.common.costing import gpu_family

__all__ = ["Offer", "accepted_families", "attempts_message", "fits", "gpu_family"]


class Offer(msgspec.Struct, frozen=True, kw_only=True):
    """One way to get a machine: a provider's GPU type (or instance type) in one region."""

    provider: str
    gpu_type: str  # the provider's own id: RunPod GPU type id, Lambda instance type name
    gpu_description: str
    gpu_count: int
    region: str
    price_per_hour: float  # USD for the whole machine
    available: bool = True

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.gpu_type}@{self.region}"

    @property
    def family(self) -> str:
        return gpu_family(self.gpu_description or self.gpu_type)


def accepted_families(request: ResourceRequest) -> list[str]:
    """The request's GPU type first, then the template's alternatives (each family once)."""
    families: list[str] = []
    for name in (request.accelerator_type, *request.accelerator_alternatives):
        family = gpu_family(name)
        if family and family not in families:
            families.append(family)
    return families


def fits(offer: Offer, request: ResourceRequest, *, exact_count: bool = False) -> bool:
    """An accepted GPU family and enough GPUs (Lambda: exactly as many, as AIBrix selects)."""
    if offer.family not in accepted_families(request):
        return False
    if exact_count:
        return offer.gpu_count == request.accelerator_count
    return offer.gpu_count >= request.accelerator_count


def attempts_message(attempts: list[dict[str, str]], request: ResourceRequest) -> str:
    """`resource_failed` text naming every attempt (offer and why it failed)."""
    wanted = f"{request.accelerator_type} x{request.accelerator_count}"
    if not attempts:
        return f"no offer anywhere fits {wanted}"
    tried = "; ".join(f"{a['offer']}: {a['error']}" for a in attempts)
    return f"no capacity for {wanted} after {len(attempts)} attempt(s): {tried}"
