"""Steps for cloud providers: choose an offer, create idempotently, fail over, release.

Each call is one driver step with (about) one provider call; the decisions are in provisions.py.

- No offer recorded: ask the providers for offers (the job's provider only, if it named one;
  else the configured order) and record the cheapest untried offer of the first provider that
  has one, *before* creating anything.
- Offer recorded, no machine: `create(attempt_name)`; the provider looks the name up first, so a
  retry after a crash, timeout or 5xx adopts the machine the earlier call made. No capacity →
  the attempt is remembered and the next offer is tried; none left → failed, listing attempts.
- Machine recorded: `describe` until ready (running), gone (failed) or broken (failed).
- Releasing: terminate (also a machine found only by name) and describe until gone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from neobatch.common.contracts import ProvisionStatus
from neobatch.resource_manager import provisions
from neobatch.resource_manager.offers import choose
from neobatch.resource_manager.providers.base import (
    CloudProvider,
    NoCapacity,
    NoGpuType,
    ProviderError,
)
from neobatch.resource_manager.provisions import Provision, Step


def candidate_providers(provision: Provision, order: Sequence[str]) -> list[str]:
    named = provision.request.provider
    return [named] if named else list(order)


async def start_step(
    clouds: Mapping[str, CloudProvider], order: Sequence[str], provision: Provision, now: datetime
) -> Step:
    try:
        if provision.provider_resource_id is not None:
            provider = clouds[provision.provider]
            machine = await provider.describe(provision.provider_resource_id)
        elif provision.offer is None:
            return await _choose(clouds, order, provision)
        else:
            provider = clouds[provision.offer.provider]
            try:
                machine = await provider.create(
                    provisions.attempt_name(provision), provision.offer, provision.request
                )
            except NoCapacity as error:
                return provisions.offer_refused(provision, error)
    except ProviderError as error:
        return provisions.after_error(provision, error, now)
    if machine.broken and not machine.ready:
        return provisions.broken_before_ready(machine)
    return provisions.after_machine(provision, machine)


async def _choose(
    clouds: Mapping[str, CloudProvider], order: Sequence[str], provision: Provision
) -> Step:
    tried = {attempt["offer"] for attempt in provision.attempts}
    no_type: list[str] = []
    for name in candidate_providers(provision, order):
        provider = clouds.get(name)
        if provider is None:
            continue
        try:
            offers = await provider.offers(provision.request)
        except NoGpuType as error:
            no_type.append(error.message)
            continue
        chosen = choose(offers, tried)
        if chosen is not None:
            return provisions.offer_chosen(provision, chosen)
    if (
        no_type
        and not provision.attempts
        and len(no_type) == len([n for n in candidate_providers(provision, order) if n in clouds])
    ):
        return Step(
            status=ProvisionStatus.FAILED, error_code="NoGpuType", error_message="; ".join(no_type)
        )
    return provisions.no_offer_left(provision)


async def release_step(clouds: Mapping[str, CloudProvider], provision: Provision) -> Step:
    provider = clouds[provision.provider]
    resource_id = provision.provider_resource_id
    try:
        if resource_id is None:
            if provision.offer is None:
                return Step(status=ProvisionStatus.RELEASED)  # nothing was ever created
            found = await provider.find(provisions.attempt_name(provision))
            if found is None:
                return Step(status=ProvisionStatus.RELEASED)
            resource_id = found.provider_resource_id
        await provider.terminate(resource_id)
        machine = await provider.describe(resource_id)
    except ProviderError as error:
        return Step(
            status=ProvisionStatus.RELEASING,
            provider_resource_id=resource_id,
            error_code=error.code,
            error_message=error.message,
        )
    if machine.gone:
        return Step(status=ProvisionStatus.RELEASED, provider_resource_id=resource_id)
    return Step(status=ProvisionStatus.RELEASING, provider_resource_id=resource_id)
