"""The provider interface and its error tree (DESIGN.md "Providers").

Every call is idempotent on our provision id: `provision` finds a machine it already made
for that id instead of making a second one (DESIGN rule 5).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from neobatch.common.contracts import ResourceRequest, SshEndpoint


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
