"""The `ssh` provider: a pool of machines you already own, listed in configuration.

Leasing reserves a host in the `ssh_hosts` collection (one lease per host); releasing frees
it. A host is ready once its SSH port accepts a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import msgspec
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.contracts import ResourceRequest, SshEndpoint
from neobatch.common.errors import ConfigError
from neobatch.resource_manager.offers import gpu_family
from neobatch.resource_manager.providers.base import Machine, NoCapacity

SSH_HOSTS = "ssh_hosts"
_ENTRY = re.compile(
    r"^(?P<user>[^@\s]+)@(?P<host>[^:\s]+):(?P<port>\d+)(?:=(?P<gpu>[^x\s]+)x(?P<count>\d+))?$"
)


class PoolHost(msgspec.Struct, frozen=True, kw_only=True):
    username: str
    host: str
    port: int
    gpu_type: str | None = None
    gpu_count: int = 0

    @property
    def key(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    def fits(self, request: ResourceRequest) -> bool:
        if self.gpu_type is None:  # an undescribed host takes any job (local stack)
            return True
        return (
            gpu_family(self.gpu_type) == gpu_family(request.accelerator_type)
            and self.gpu_count >= request.accelerator_count
        )


def parse_pool(value: str) -> list[PoolHost]:
    """`user@host:port[=GPUxCOUNT]`, comma-separated."""
    hosts = []
    for raw in filter(None, (part.strip() for part in value.split(","))):
        match = _ENTRY.match(raw)
        if match is None:
            raise ConfigError(f"NEOBATCH_SSH_POOL entry {raw!r} is not user@host:port[=GPUxCOUNT]")
        hosts.append(
            PoolHost(
                username=match["user"],
                host=match["host"],
                port=int(match["port"]),
                gpu_type=match["gpu"],
                gpu_count=int(match["count"] or 0),
            )
        )
    return hosts


async def _port_open(host: str, port: int, timeout_seconds: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_seconds)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class SshPoolProvider:
    name = "ssh"

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        hosts: list[PoolHost],
        *,
        connect_timeout_seconds: float = 3.0,
    ) -> None:
        self._hosts = db[SSH_HOSTS]
        self._pool = {h.key: h for h in hosts}
        self._timeout = connect_timeout_seconds

    async def sync_pool(self) -> None:
        """Make the collection list exactly the configured hosts, keeping current leases."""
        for host in self._pool.values():
            await self._hosts.update_one(
                {"_id": host.key},
                {"$set": msgspec.to_builtins(host), "$setOnInsert": {"leased_by": None}},
                upsert=True,
            )
        await self._hosts.delete_many({"_id": {"$nin": list(self._pool)}, "leased_by": None})

    async def provision(
        self, provision_id: str, resource_name: str, request: ResourceRequest
    ) -> Machine:
        doc = await self._hosts.find_one({"leased_by": provision_id})
        if doc is None:
            candidates = [key for key, host in self._pool.items() if host.fits(request)]
            doc = await self._hosts.find_one_and_update(
                {"_id": {"$in": candidates}, "leased_by": None},
                {"$set": {"leased_by": provision_id}},
                sort=[("_id", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
        if doc is None:
            raise NoCapacity(
                f"no free host in the ssh pool fits {request.accelerator_type} x{request.accelerator_count}"
            )
        return await self.get(provision_id, doc["_id"])

    async def get(self, provision_id: str, provider_resource_id: str) -> Machine:
        host = self._pool.get(provider_resource_id)
        leased = await self._hosts.find_one(
            {"_id": provider_resource_id, "leased_by": provision_id}
        )
        if host is None or leased is None:
            return Machine(provider_resource_id=provider_resource_id, ready=False, gone=True)
        ready = await _port_open(host.host, host.port, self._timeout)
        endpoint = SshEndpoint(host=host.host, port=host.port, username=host.username)
        return Machine(
            provider_resource_id=provider_resource_id,
            ready=ready,
            endpoint=endpoint,
            region="local",
        )

    async def release(self, provision_id: str, provider_resource_id: str | None) -> None:
        await self._hosts.update_many({"leased_by": provision_id}, {"$set": {"leased_by": None}})
