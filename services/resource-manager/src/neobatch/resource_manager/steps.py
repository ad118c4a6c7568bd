"""One step of one provision: the provider calls it takes, then the decision (provisions.py).

Every provider is stepped the same way, through the verbs of providers/base.py; each step is
(about) one provider call:

- Releasing: `find` the attempt's machine if none is recorded (a create may have reached the
  provider before a crash), `terminate` it, and stay releasing until the provider confirms it
  is gone.
- Past the deadline: failed (the release that follows removes anything half made).
- A provider that rents by offer and has no offer recorded: ask the providers for offers (the
  job's provider only, if it named one; else `offer_order`) and record the cheapest untried
  offer of the first provider that has one, *before* creating anything.
- No machine recorded: `create`; the provider adopts what an earlier call made for the same
  attempt, so a retry after a crash, timeout or 5xx never makes a second machine.
- Machine recorded: `describe` until ready (running), gone or broken (failed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from neobatch.common.clock import Clock
from neobatch.common.contracts import ProvisionStatus
from neobatch.resource_manager import provisions
from neobatch.resource_manager.offers import accepted_families
from neobatch.resource_manager.providers.base import NoGpuType, Provider, ProviderError
from neobatch.resource_manager.provisions import Decision, Provision
from neobatch.resource_manager.ranking import DEFAULT_STARTUP_SECONDS, Estimate, choose


async def step(
    provision: Provision,
    providers: Mapping[str, Provider],
    offer_order: Sequence[str],
    clock: Clock,
    learned: Learned | None = None,
) -> Decision:
    provider = providers.get(provision.provider)
    if provider is None:
        return provisions.unknown_provider(provision, tuple(providers), clock.now())
    if provision.status is ProvisionStatus.RELEASING:
        return await _release(provider, provision, clock)
    if provisions.is_past_deadline(provision, clock.now()):
        return provisions.deadline_passed(provision, clock.now())
    try:
        if provision.provider_resource_id is not None:
            machine = await provider.describe(
                provisions.attempt_of(provision), provision.provider_resource_id
            )
        elif provider.rents_by_offer and provision.offer is None:
            return await _choose_offer(provision, providers, offer_order, clock, learned)
        else:
            machine = await provider.create(provisions.attempt_of(provision), provision.request)
    except ProviderError as error:
        return provisions.after_error(provision, error, clock.now())
    return provisions.after_machine(provision, machine, clock.now())


def candidate_providers(provision: Provision, offer_order: Sequence[str]) -> list[str]:
    named = provision.request.provider
    return [named] if named else list(offer_order)


async def _choose_offer(
    provision: Provision,
    providers: Mapping[str, Provider],
    offer_order: Sequence[str],
    clock: Clock,
    learned: Learned | None = None,
) -> Decision:
    estimate = await _estimate(provision, learned)
    tried = {attempt["offer"] for attempt in provision.attempts}
    asked = [name for name in candidate_providers(provision, offer_order) if name in providers]
    no_gpu_type: list[str] = []
    for name in asked:
        try:
            offers = await providers[name].offers(provision.request)
        except NoGpuType as error:
            no_gpu_type.append(error.message)
            continue
        chosen = choose(offers, tried, estimate)
        if chosen is not None:
            offer, placement = chosen
            return provisions.offer_chosen(provision, offer, clock.now(), placement)
    return provisions.no_offer(provision, no_gpu_type, len(asked), clock.now())


# (template key, GPU families) → GPU family → output tokens/s per machine learned so far.
Learned = Callable[[str, Sequence[str]], Awaitable[dict[str, float]]]


async def _estimate(provision: Provision, learned: Learned | None) -> Estimate:
    request = provision.request
    figures: dict[str, float] = {}
    if learned is not None and request.template_key and request.expected_output_tokens > 0:
        figures = await learned(request.template_key, accepted_families(request))
    startup = request.startup_seconds
    return Estimate(
        expected_output_tokens=request.expected_output_tokens,
        startup_seconds=DEFAULT_STARTUP_SECONDS if startup is None else startup,
        declared=request.throughput,
        learned=figures,
    )


async def _release(provider: Provider, provision: Provision, clock: Clock) -> Decision:
    attempt = provisions.attempt_of(provision)
    resource_id = provision.provider_resource_id
    try:
        if resource_id is None:
            found = await provider.find(attempt)
            if found is None:  # nothing was ever made for it
                return provisions.after_release(provision, None, True, clock.now())
            resource_id = found.provider_resource_id
        gone = await provider.terminate(attempt, resource_id)
    except ProviderError as error:
        return provisions.release_failed(provision, resource_id, error, clock.now())
    return provisions.after_release(provision, resource_id, gone, clock.now())
