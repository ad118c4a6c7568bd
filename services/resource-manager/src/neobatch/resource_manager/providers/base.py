"""The provider interface and its error tree (DESIGN.md "Providers").

Every call is idempotent on our provision id: `provision` finds a machine it already made
for that id instead of making a second one (DESIGN rule 5).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from neobatch.common.contracts import ResourceRequest, SshEndpoint
from neobatch.resource_manager.offers import Offer


class ProviderError(Exception):
    """A provider problem. `retryable` errors are tried again until the provision deadline."""

    code = "ProviderError"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoCapacity(ProviderError):
    code = "NoCapacity"
    retryable = True


class NoGpuType(ProviderError):
    code = "NoGpuType"


class MissingSSHKey(ProviderError):
    code = "MissingSSHKey"


class TransientProviderError(ProviderError):
    code = "ProviderUnavailable"
    retryable = True


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    """What the provider says about the machine behind one provision."""

    provider_resource_id: str
    ready: bool
    endpoint: SshEndpoint | None = None
    region: str = ""
    gone: bool = False
    # Exists but will not serve (RunPod EXITED/ERROR, Lambda unhealthy/preempted): lost if running.
    broken: bool = False
    status: str = ""  # the provider's own word for the machine's state
    name: str = ""


class OwnedMachine(msgspec.Struct, frozen=True, kw_only=True):
    """A machine under the account whose name carries our prefix (for the reconciler)."""

    provider_resource_id: str
    name: str
    status: str = ""


class Provider(Protocol):
    name: str

    async def provision(
        self, provision_id: str, resource_name: str, request: ResourceRequest
    ) -> Machine:
        """Create (or find the already-created) machine for `provision_id`."""
        ...

    async def get(self, provision_id: str, provider_resource_id: str) -> Machine:
        """The machine's current state; `gone=True` once it no longer exists."""
        ...

    async def release(self, provision_id: str, provider_resource_id: str | None) -> None:
        """Start releasing; `get` reports `gone` once the provider confirms."""
        ...


class RateLimited(TransientProviderError):
    code = "RateLimited"


class CloudProvider(Protocol):
    """A provider that rents machines by offer (RunPod, Lambda Cloud); see placement.py.

    `create` is idempotent on `name`: it looks the name up first and adopts what it finds, so a
    retry after a timeout or 5xx never makes a second machine (DESIGN rule 5).
    """

    name: str

    async def offers(self, request: ResourceRequest) -> list[Offer]:
        """Every offer that fits the request, with live prices and availability."""
        ...

    async def catalog(self) -> list[Offer]:
        """Everything the provider sells (for the catalog cache)."""
        ...

    async def create(self, name: str, offer: Offer, request: ResourceRequest) -> Machine: ...

    async def find(self, name: str) -> Machine | None: ...

    async def describe(self, provider_resource_id: str) -> Machine: ...

    async def terminate(self, provider_resource_id: str) -> None:
        """Ask for deletion; an unknown id counts as done. `describe` confirms `gone`."""
        ...

    async def list_owned(self, prefix: str) -> list[OwnedMachine]: ...
