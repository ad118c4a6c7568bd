"""The `ssh` provider: a pool of machines you already own, listed in configuration.

Leasing reserves a host in the `ssh_hosts` collection (one lease per host); releasing frees
it. A host is ready once its SSH port accepts a connection.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
from pymongo import ASCENDING, IndexModel, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.contracts import ResourceRequest, SshEndpoint
from neobatch.common.errors import ConfigError
from neobatch.common.mongo import (
    delete_many_in_transaction,
    ensure_indexes,
    update_many_in_transaction,
)
from neobatch.resource_manager.offers import Offer, accepted_families, gpu_family
from neobatch.resource_manager.providers.base import (
    Attempt,
    Machine,
    NoCapacity,
    OwnedMachine,
    machine_gone,
)
from neobatch.resource_manager.providers.probe import port_open

SSH_HOSTS = "ssh_hosts"
# Free hosts (`leased_by: null`) and the host a provision holds, each an index lookup.
HOST_INDEXES = [IndexModel([("leased_by", ASCENDING)], name="leased_by")]
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
            gpu_family(self.gpu_type) in accepted_families(request)
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


def parse_prices(value: str) -> dict[str, float]:
    """`GPU_TYPE=USD` per GPU per hour, comma-separated → {gpu family: price}."""
    prices: dict[str, float] = {}
    for raw in filter(None, (part.strip() for part in value.split(","))):
        gpu, _, price = raw.partition("=")
        try:
            usd = float(price)
        except ValueError:
            usd = -1.0
        if not gpu.strip() or not usd >= 0 or usd == float("inf"):
            raise ConfigError(f"NEOBATCH_SSH_POOL_PRICES entry {raw!r} is not GPU_TYPE=USD")
        prices[gpu_family(gpu.strip())] = usd
    return prices


def host_price(host: PoolHost, prices: dict[str, float]) -> float:
    """A host's price per hour: its GPU type's price per GPU times its GPUs (undescribed: 0)."""
    if host.gpu_type is None:
        return 0.0
    return prices.get(gpu_family(host.gpu_type), 0.0) * max(1, host.gpu_count)


class SshPoolProvider:
    """Leases pool hosts, one `ssh_hosts` document per host (`_id` = `user@host:port`).

    A lease is one compare-and-set on the host's document (`{_id, leased_by: null}`), a point
    lookup: no `$in` or `find_one_and_update` over the pool (both scan on our test database).
    Which host to try comes from this process's view of the free hosts, read once and kept
    current by its own leases and releases; when it runs dry (or a host turns out taken by
    another instance) it is read again from the `free` index. A provision this process has
    just recorded (`fresh`) cannot hold a host yet, so its lease needs no lookup first.
    """

    name = "ssh"
    # `create` leases a free host itself: nothing to choose or record first, and a busy pool
    # is waited out (a host frees when its job ends). Hosts are ours: nothing can be orphaned.
    rents_by_offer = False

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        hosts: list[PoolHost],
        *,
        connect_timeout_seconds: float = 3.0,
        prices: dict[str, float] | None = None,
    ) -> None:
        self._hosts = db[SSH_HOSTS]
        self._prices = prices or {}
        self._pool = {h.key: h for h in hosts}
        self._timeout = connect_timeout_seconds
        # Hosts believed free (None = not read yet); a lease in progress has taken its key out.
        self._free: set[str] | None = None
        self._free_generation = 0
        self._free_lock = asyncio.Lock()

    async def sync_pool(self) -> None:
        """Make the collection list exactly the configured hosts, keeping current leases."""
        await ensure_indexes(self._hosts, HOST_INDEXES)
        if self._pool:
            await self._hosts.bulk_write(
                [
                    UpdateOne(
                        {"_id": host.key},
                        {"$set": msgspec.to_builtins(host), "$setOnInsert": {"leased_by": None}},
                        upsert=True,
                    )
                    for host in self._pool.values()
                ],
                ordered=False,
            )
        await delete_many_in_transaction(
            self._hosts, {"_id": {"$nin": list(self._pool)}, "leased_by": None}
        )
        self._free = None

    async def offers(self, request: ResourceRequest) -> list[Offer]:
        return []  # not rented by offer: `create` leases a host directly

    async def catalog(self) -> list[Offer]:
        """The pool's described hosts as offers at the operator's prices (for the catalog and
        quotes; `create` still leases a host directly). Undescribed hosts are not listed."""
        offers: dict[str, Offer] = {}
        for host in self._pool.values():
            if host.gpu_type is None:
                continue
            offer = Offer(
                provider=self.name,
                gpu_type=host.gpu_type,
                gpu_description=host.gpu_type,
                gpu_count=max(1, host.gpu_count),
                region="pool",
                price_per_hour=host_price(host, self._prices),
            )
            offers.setdefault(offer.key, offer)  # one per GPU type (the cache key)
        return list(offers.values())

    async def list_owned(self, prefix: str) -> list[OwnedMachine]:
        return []  # every host is ours by configuration: none is an orphan

    async def create(self, attempt: Attempt, request: ResourceRequest) -> Machine:
        # Unless fresh, it may hold a host from an attempt that crashed before recording it.
        key = None if attempt.fresh else await self._held(attempt.provision_id)
        if key is None:
            key = await self._lease(attempt.provision_id, request)
        if key is None:
            raise NoCapacity(
                f"no free host in the ssh pool fits {request.accelerator_type} x{request.accelerator_count}"
            )
        return await self._machine(key)

    async def find(self, attempt: Attempt) -> Machine | None:
        key = await self._held(attempt.provision_id)
        return None if key is None else await self._machine(key)

    async def describe(self, attempt: Attempt, provider_resource_id: str) -> Machine:
        leased = await self._hosts.find_one(
            {"_id": provider_resource_id, "leased_by": attempt.provision_id}, projection={"_id": 1}
        )
        if leased is None:
            return machine_gone(provider_resource_id)
        return await self._machine(provider_resource_id)

    async def terminate(self, attempt: Attempt, provider_resource_id: str) -> bool:
        # Every host the provision holds, recorded or not (a lease before a crash), and only
        # those: a repeated release never frees a host another provision leased since. Once
        # this returns no host is leased by the provision, so the release is confirmed.
        await update_many_in_transaction(
            self._hosts, {"leased_by": attempt.provision_id}, {"$set": {"leased_by": None}}
        )
        if self._free is not None and provider_resource_id in self._pool:
            self._free.add(provider_resource_id)
        return True

    async def _held(self, provision_id: str) -> str | None:
        doc = await self._hosts.find_one({"leased_by": provision_id}, projection={"_id": 1})
        return doc["_id"] if doc is not None else None

    async def _read_free(self) -> set[str]:
        docs = await self._hosts.find({"leased_by": None}, projection={"_id": 1}).to_list()
        return {doc["_id"] for doc in docs if doc["_id"] in self._pool}

    async def _free_hosts(self, stale: int) -> tuple[set[str], int]:
        """The free-host view, read again if it is still generation `stale` (-1: if unread).

        Concurrent leases share one read, so they take keys out of one set.
        """
        async with self._free_lock:
            if self._free is None or self._free_generation == stale:
                self._free = await self._read_free()
                self._free_generation += 1
            return self._free, self._free_generation

    async def _lease(self, provision_id: str, request: ResourceRequest) -> str | None:
        """Take a free host that fits with one compare-and-set; None when none is free."""
        seen = -1
        for _ in range(2):
            free, seen = await self._free_hosts(seen)
            for key in sorted(k for k in free if self._pool[k].fits(request)):
                if key not in free:
                    continue  # taken by a concurrent lease of this process meanwhile
                free.discard(key)
                result = await self._hosts.update_one(
                    {"_id": key, "leased_by": None}, {"$set": {"leased_by": provision_id}}
                )
                if result.modified_count == 1:
                    return key
        return None

    async def _machine(self, key: str) -> Machine:
        host = self._pool.get(key)
        if host is None:  # leased before the pool was reconfigured without it
            return machine_gone(key)
        ready = await port_open(host.host, host.port, self._timeout)
        endpoint = SshEndpoint(host=host.host, port=host.port, username=host.username)
        return Machine(
            provider_resource_id=key,
            ready=ready,
            endpoint=endpoint,
            region="local",
            price_per_hour=host_price(host, self._prices),
        )
