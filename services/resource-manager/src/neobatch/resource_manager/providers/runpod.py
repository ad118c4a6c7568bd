"""The `runpod` provider: RunPod REST v2 (`RUNPOD_BASE_URL`, default https://api.runpod.io).

Offers come from `GET /v2/catalog/gpus?include=AVAILABILITY&product=POD` (one offer per GPU type
and data center with stock, priced per GPU times count). A pod is created with one GPU type and one
data center (the offer), `22/tcp` published and our public key in `env.PUBLIC_KEY`; it is ready
when it is `RUNNING` with `ssh.direct` set (v2 reports RUNNING before the ports exist) and the
SSH port accepts a connection. v2 has no name filter on `GET /v2/pods`, so lookups by name list
and match here. Errors are problem+json: no capacity is a 400 whose detail says so.
"""

from __future__ import annotations

from typing import Any

import httpx

from neobatch.common.contracts import ResourceRequest, SshEndpoint
from neobatch.common.logs import redact_text
from neobatch.resource_manager.offers import Offer, fits
from neobatch.resource_manager.providers.base import (
    Attempt,
    Machine,
    NoCapacity,
    NoGpuType,
    OwnedMachine,
    ProviderError,
    create_by_name,
    machine_gone,
)
from neobatch.resource_manager.providers.http import ApiClient, ApiError
from neobatch.resource_manager.providers.probe import port_open
from neobatch.resource_manager.settings import RunPodSettings

_NO_CAPACITY_WORDS = ("no longer any instances", "no instances currently available")
_BROKEN = {"EXITED", "ERROR"}


def problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, list):  # v1-style array of {error, problems}
        body = body[0] if body else {}
    if not isinstance(body, dict):
        return str(body)[:200]
    parts = [str(body.get(k)) for k in ("detail", "error", "message") if body.get(k)]
    parts += [str(e) for e in body.get("errors") or []][:3]
    return "; ".join(parts)


class RunPodProvider:
    name = "runpod"
    rents_by_offer = True

    def __init__(
        self,
        settings: RunPodSettings,
        *,
        retry_budget_seconds: float,
        probe_timeout_seconds: float = 2.0,
    ) -> None:
        self._api = ApiClient(
            self.name, settings, problem_text, budget_seconds=retry_budget_seconds
        )
        self._public_key = settings.ssh_public_key
        self._data_centers = settings.data_centers
        self._image = settings.image
        self._cloud = settings.cloud_type
        self._probe_timeout = probe_timeout_seconds

    async def close(self) -> None:
        await self._api.close()

    async def _gpus(self, count: int) -> list[dict[str, Any]]:
        params = {"include": "AVAILABILITY", "product": "POD", "count": count, "cloud": self._cloud}
        response = await self._api.call("GET", "/v2/catalog/gpus", params=params)
        return list(response.json().get("gpus", []))

    def _offers_from(self, gpus: list[dict[str, Any]], count: int) -> list[Offer]:
        cloud = "community" if self._cloud == "COMMUNITY" else "secure"
        offers = []
        for gpu in gpus:
            price = float((gpu.get("price") or {}).get(cloud) or 0.0)
            for dc in gpu.get("dataCenters") or []:
                if self._data_centers and dc["id"] not in self._data_centers:
                    continue
                offers.append(
                    Offer(
                        provider=self.name,
                        gpu_type=gpu["id"],
                        gpu_description=gpu["id"],
                        gpu_count=count,
                        region=dc["id"],
                        price_per_hour=round(price * count, 4),
                        available=dc.get("availability", "NONE") != "NONE",
                    )
                )
        return offers

    async def offers(self, request: ResourceRequest) -> list[Offer]:
        count = max(1, request.accelerator_count)
        gpus = await self._gpus(count)
        offers = [o for o in self._offers_from(gpus, count) if fits(o, request)]
        if not offers and not any(fits(Offer(**_probe_offer(g, count)), request) for g in gpus):
            raise NoGpuType(f"runpod sells no GPU type matching {request.accelerator_type!r}")
        return offers

    async def catalog(self) -> list[Offer]:
        return self._offers_from(await self._gpus(1), 1)

    async def create(self, attempt: Attempt, request: ResourceRequest) -> Machine:
        return await create_by_name(self, attempt, self._launch)

    async def _launch(self, attempt: Attempt, offer: Offer) -> Machine:
        body = {
            "name": attempt.name,
            "image": self._image,
            "cloud": self._cloud,
            "gpu": {"id": offer.gpu_type, "count": offer.gpu_count},
            "dataCenterIds": [offer.region],
            "ports": ["8000/http", "22/tcp"],
            "env": {"PUBLIC_KEY": self._public_key},
        }
        try:
            response = await self._api.call("POST", "/v2/pods", json=body, retry=False)
        except ApiError as error:
            text = error.message.lower()
            if any(words in text for words in _NO_CAPACITY_WORDS):
                raise NoCapacity("no capacity (no instances available)") from error
            raise
        if response.status_code == 404:
            # Redacted as http.py does for every other error: the message is stored and shown.
            raise ProviderError(f"runpod POST /v2/pods: 404 {redact_text(problem_text(response))}")
        return await self._machine(response.json())

    async def find(self, attempt: Attempt) -> Machine | None:
        if attempt.offer is None:
            return None  # no create is ever sent before its offer is recorded
        for pod in await self._pods():
            if pod.get("name") == attempt.name and pod.get("status") != "TERMINATED":
                return await self._machine(pod)
        return None

    async def describe(self, attempt: Attempt, provider_resource_id: str) -> Machine:
        response = await self._api.call("GET", f"/v2/pods/{provider_resource_id}")
        if response.status_code == 404:
            return machine_gone(provider_resource_id)
        return await self._machine(response.json())

    async def terminate(self, attempt: Attempt, provider_resource_id: str) -> bool:
        await self._api.call("DELETE", f"/v2/pods/{provider_resource_id}")  # 404 = already gone
        return (await self.describe(attempt, provider_resource_id)).gone

    async def list_owned(self, prefix: str) -> list[OwnedMachine]:
        return [
            OwnedMachine(provider_resource_id=p["id"], name=p["name"])
            for p in await self._pods()
            if str(p.get("name", "")).startswith(prefix) and p.get("status") != "TERMINATED"
        ]

    async def _pods(self) -> list[dict[str, Any]]:
        response = await self._api.call("GET", "/v2/pods")
        return list(response.json().get("pods", []))

    async def _machine(self, pod: dict[str, Any]) -> Machine:
        status = str(pod.get("status", ""))
        direct = (pod.get("ssh") or {}).get("direct")
        endpoint = None
        ready = False
        if status == "RUNNING" and direct and direct.get("host") and direct.get("port"):
            endpoint = SshEndpoint(host=direct["host"], port=int(direct["port"]), username="root")
            ready = await port_open(endpoint.host, endpoint.port, self._probe_timeout)
        return Machine(
            provider_resource_id=pod["id"],
            ready=ready,
            endpoint=endpoint,
            region=str(pod.get("dataCenterId") or ""),
            gone=status == "TERMINATED",
            broken=status in _BROKEN,
            status=status,
        )


def _probe_offer(gpu: dict[str, Any], count: int) -> dict[str, Any]:
    """An offer-shaped view of a catalog entry, only to ask "is this type sold at all"."""
    return {
        "provider": "runpod",
        "gpu_type": gpu["id"],
        "gpu_description": gpu["id"],
        "gpu_count": count,
        "region": "",
        "price_per_hour": 0.0,
    }
