"""The one provider contract (DESIGN.md "Providers") and its error tree.

The ssh pool, RunPod and Lambda Cloud implement the same verbs, and the driver steps every
provider the same way (steps.py). How they differ is declared here, as data every provider
has (`rents_by_offer`), or lives inside each provider's verbs (what `terminate` confirms, what
`find` can know).

Every call is idempotent on the attempt (DESIGN rule 5): `create` first looks for a machine an
earlier call made for the same attempt and adopts it, so a retry after a crash, timeout or 5xx
never makes a second machine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from neobatch.common.contracts import ResourceRequest, SshEndpoint
from neobatch.common.errors import NeobatchError
from neobatch.resource_manager.offers import Offer


class ProviderError(NeobatchError):
    """A provider problem. `retryable` errors are tried again until the provision deadline.

    Messages are stored and shown to users: they never carry a credential (http.py redacts
    response text, and keys only live in request headers).
    """

    code = "ProviderError"
    retryable = False


class NoCapacity(ProviderError):
    """Nothing free right now: a recorded offer moves on to the next; without one, wait."""

    code = "NoCapacity"
    retryable = True


class NoGpuType(ProviderError):
    code = "NoGpuType"


class MissingSSHKey(ProviderError):
    code = "MissingSSHKey"


class TransientProviderError(ProviderError):
    code = "ProviderUnavailable"
    retryable = True


class RateLimited(TransientProviderError):
    code = "RateLimited"


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One provision's current try at a machine: everything a provider may key its machine by."""

    provision_id: str  # ours: the ssh pool leases hosts by it
    name: str  # deterministic per attempt: clouds name the machine by it
    # The offer recorded before any create (providers that rent by offer); None: none chosen.
    offer: Offer | None = None
    # Recorded by this process and not stepped since: no earlier create can exist for it, so a
    # provider may skip looking for one.
    fresh: bool = False


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    """What the provider says about the machine behind one attempt."""

    provider_resource_id: str
    ready: bool
    endpoint: SshEndpoint | None = None
    region: str = ""
    gone: bool = False
    # Exists but will not serve (RunPod EXITED/ERROR, Lambda unhealthy/preempted): lost if running.
    broken: bool = False
    status: str = ""  # the provider's own word for the machine's state
    # USD per hour for the whole machine when the provider prices it itself (the ssh pool's
    # operator-set prices); None: the price is the recorded offer's.
    price_per_hour: float | None = None


def machine_gone(provider_resource_id: str) -> Machine:
    """A machine the provider no longer has (or never had for this attempt)."""
    return Machine(provider_resource_id=provider_resource_id, ready=False, gone=True)


class OwnedMachine(msgspec.Struct, frozen=True, kw_only=True):
    """A machine under the account whose name carries our prefix (for the reconciler)."""

    provider_resource_id: str
    name: str


class Provider(Protocol):
    name: str
    # True: machines are rented by offer (the clouds). An offer is chosen and recorded before any
    # create, so a restart creates the same name at the same provider; a refused offer moves on to
    # the next; a crash can leave a machine nobody owns, which the reconciler looks for.
    # False: `create` picks the machine itself (the ssh pool leases a free host it owns).
    rents_by_offer: bool

    async def offers(self, request: ResourceRequest) -> list[Offer]:
        """Every offer that fits the request, with live prices and availability."""
        ...

    async def catalog(self) -> list[Offer]:
        """Everything the provider sells (for the catalog cache)."""
        ...

    async def create(self, attempt: Attempt, request: ResourceRequest) -> Machine:
        """The attempt's machine: the one an earlier call made (unless `fresh`), else a new one."""
        ...

    async def find(self, attempt: Attempt) -> Machine | None:
        """The machine made for this attempt, recorded or not; None when there is none."""
        ...

    async def describe(self, attempt: Attempt, provider_resource_id: str) -> Machine:
        """The machine's current state; `gone=True` once it no longer exists (for this attempt)."""
        ...

    async def terminate(self, attempt: Attempt, provider_resource_id: str) -> bool:
        """Ask for deletion (an unknown id counts as done); True once the machine is gone."""
        ...

    async def list_owned(self, prefix: str) -> list[OwnedMachine]:
        """Machines under the account whose name starts with `prefix`."""
        ...


async def create_by_name(
    provider: Provider, attempt: Attempt, launch: Callable[[Attempt, Offer], Awaitable[Machine]]
) -> Machine:
    """`create` for a provider that names machines by attempt (DESIGN rule 5): adopt the machine
    an earlier call made under the attempt's name (unless `fresh`), else launch the offer
    recorded before any create."""
    found = None if attempt.fresh else await provider.find(attempt)
    if found is not None:
        return found
    if attempt.offer is None:
        raise ProviderError(f"{attempt.name}: create called before an offer was recorded")
    return await launch(attempt, attempt.offer)
