"""The `lambdaCloud` provider: Lambda Cloud API v1 (`LAMBDA_CLOUD_BASE_URL`).

Offers come from `GET /instance-types` (price and `regions_with_capacity_available`, so no
launch is spent discovering capacity); a type fits when its GPU family matches and its GPU count
equals the request's (AIBrix §3.6). `LAMBDA_CLOUD_REGION` pins the region. Launch takes exactly
one registered key (the first of `LAMBDA_CLOUD_SSH_KEYS`, checked against `GET /ssh-keys`:
`MissingSSHKey` if absent), our deterministic `name` and a `neobatch-provision` tag. Ready when
`active` with an `ip` and the SSH port accepting connections. SSH is `ubuntu@ip:22`; the port is
`LAMBDA_CLOUD_SSH_PORT` (default 22), which only the local simulator changes (it serves each
instance's SSH on its own loopback IP at one unprivileged port).
"""

from __future__ import annotations

from typing import Any

import httpx

from neobatch.common.contracts import ResourceRequest, SshEndpoint
from neobatch.resource_manager.offers import Offer, fits
from neobatch.resource_manager.providers.base import (
    Attempt,
    Machine,
    MissingSSHKey,
    NoCapacity,
    NoGpuType,
    OwnedMachine,
    create_by_name,
    machine_gone,
)
from neobatch.resource_manager.providers.http import ApiClient, ApiError
from neobatch.resource_manager.providers.probe import port_open
from neobatch.resource_manager.settings import LambdaCloudSettings

_GONE = {"terminated", "preempted"}
_BROKEN = {"unhealthy", "preempted", "terminating"}


def error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return response.text[:200]
    return f"{error.get('code', '')}: {error.get('message', '')}"


def _code(error: ApiError) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    return str((body.get("error") or {}).get("code", ""))


class LambdaCloudProvider:
    name = "lambdaCloud"
    rents_by_offer = True

    def __init__(
        self,
        settings: LambdaCloudSettings,
        *,
        retry_budget_seconds: float,
        probe_timeout_seconds: float = 2.0,
    ) -> None:
        self._api = ApiClient(self.name, settings, error_text, budget_seconds=retry_budget_seconds)
        self._keys = settings.ssh_key_names
        self._region = settings.region
        self._ssh_port = settings.ssh_port
        self._probe_timeout = probe_timeout_seconds

    async def close(self) -> None:
        await self._api.close()

    async def catalog(self) -> list[Offer]:
        response = await self._api.call("GET", "/instance-types")
        offers = []
        for item in response.json()["data"].values():
            kind = item["instance_type"]
            regions = [r["name"] for r in item["regions_with_capacity_available"]]
            for region in regions or [""]:
                if self._region and region and region != self._region:
                    continue
                offers.append(
                    Offer(
                        provider=self.name,
                        gpu_type=kind["name"],
                        gpu_description=kind.get("gpu_description") or kind["name"],
                        gpu_count=int(kind["specs"]["gpus"]),
                        region=region,
                        price_per_hour=kind["price_cents_per_hour"] / 100,
                        available=bool(region),
                    )
                )
        return offers

    async def offers(self, request: ResourceRequest) -> list[Offer]:
        matching = [o for o in await self.catalog() if fits(o, request, exact_count=True)]
        if not matching:
            raise NoGpuType(
                f"lambdaCloud sells no instance type with {request.accelerator_count}x "
                f"{request.accelerator_type}"
            )
        return [o for o in matching if o.available]

    async def _key_name(self) -> str:
        response = await self._api.call("GET", "/ssh-keys")
        registered = {key["name"] for key in response.json()["data"]}
        for name in self._keys:
            if name in registered:
                return name
        raise MissingSSHKey(
            f"none of the SSH keys {', '.join(self._keys)} is registered in the Lambda account"
        )

    async def create(self, attempt: Attempt, request: ResourceRequest) -> Machine:
        return await create_by_name(self, attempt, self._launch)

    async def _launch(self, attempt: Attempt, offer: Offer) -> Machine:
        body = {
            "region_name": offer.region,
            "instance_type_name": offer.gpu_type,
            "ssh_key_names": [await self._key_name()],
            "name": attempt.name,
            "tags": [{"key": "neobatch-provision", "value": attempt.name}],
        }
        try:
            response = await self._api.call(
                "POST", "/instance-operations/launch", json=body, retry=False
            )
        except ApiError as error:
            if _code(error) in (
                "instance-operations/launch/insufficient-capacity",
                "global/quota-exceeded",
            ):
                raise NoCapacity(f"no capacity ({_code(error)})") from error
            raise
        instance_id = response.json()["data"]["instance_ids"][0]
        return await self.describe(attempt, instance_id)

    async def find(self, attempt: Attempt) -> Machine | None:
        if attempt.offer is None:
            return None  # no create is ever sent before its offer is recorded
        for instance in await self._instances():
            if instance.get("name") == attempt.name and instance.get("status") not in _GONE:
                return await self._machine(instance)
        return None

    async def describe(self, attempt: Attempt, provider_resource_id: str) -> Machine:
        response = await self._api.call("GET", f"/instances/{provider_resource_id}")
        if response.status_code == 404:
            return machine_gone(provider_resource_id)
        return await self._machine(response.json()["data"])

    async def terminate(self, attempt: Attempt, provider_resource_id: str) -> bool:
        body = {"instance_ids": [provider_resource_id]}
        await self._api.call("POST", "/instance-operations/terminate", json=body)  # 404 = gone
        return (await self.describe(attempt, provider_resource_id)).gone

    async def list_owned(self, prefix: str) -> list[OwnedMachine]:
        return [
            OwnedMachine(provider_resource_id=i["id"], name=i["name"])
            for i in await self._instances()
            if str(i.get("name", "")).startswith(prefix)
            and i.get("status") not in _GONE | {"terminating"}
        ]

    async def _instances(self) -> list[dict[str, Any]]:
        response = await self._api.call("GET", "/instances")
        return list(response.json()["data"])

    async def _machine(self, instance: dict[str, Any]) -> Machine:
        status = str(instance.get("status", ""))
        endpoint = None
        ready = False
        if status == "active" and instance.get("ip"):
            endpoint = SshEndpoint(host=instance["ip"], port=self._ssh_port, username="ubuntu")
            ready = await port_open(endpoint.host, endpoint.port, self._probe_timeout)
        return Machine(
            provider_resource_id=instance["id"],
            ready=ready,
            endpoint=endpoint,
            region=str((instance.get("region") or {}).get("name", "")),
            # Terminating counts as gone once we asked for it; as broken if we did not.
            gone=status in _GONE,
            broken=status in _BROKEN,
            status=status,
        )
