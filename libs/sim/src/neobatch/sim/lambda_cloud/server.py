"""Lambda Cloud API v1 simulator (``https://cloud.lambda.ai`` + ``/api/v1/...``).

Implements what the ``lambdaCloud`` provider uses: ``GET /api/v1/instance-types``,
``POST /api/v1/instance-operations/launch`` and ``.../terminate``, ``GET /api/v1/instances`` and
``/instances/{id}``, and the SSH-key registry (``GET/POST /api/v1/ssh-keys``,
``DELETE /api/v1/ssh-keys/{id}``). Success bodies are ``{"data": ...}``, errors
``{"error": {"code", "message", "suggestion"?}}``; auth is Bearer or Basic (``key:`` or raw key).
Launches are rate limited per API key (one per 12 s, scaled by the time factor → 429 with
``Retry-After``); capacity is per instance type and region; ``booting`` → ``active`` after the
boot delay, with ``ip`` and ``hostname`` appearing only then.

SSH on loopback: a real instance serves SSH on port 22 of its own IP. The simulator gives every
instance its own loopback address (``127.<n>.<x>.<y>``, all routed to ``lo`` on Linux) and serves
each instance's SSH host on that address at one port per simulator (``ssh_port``), because
binding port 22 needs privileges. The provider's ``LAMBDA_CLOUD_SSH_PORT`` (default 22) is set to
that port; nothing else differs from the real API.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from typing import Any

from aiohttp import web

from neobatch.sim.cloud.sim import JSON_BODY, CloudSim, RunningSim, SimMachine, serve
from neobatch.sim.cloud.specs import lambda_doc
from neobatch.sim.testing.servers import free_port

# name → (description, gpu_description, price cents/hour, vcpus, memory GiB, storage GiB, gpus)
INSTANCE_TYPES: dict[str, tuple[str, str, int, int, int, int, int]] = {
    "gpu_1x_a10": ("1x A10 (24 GB PCIe)", "A10 (24 GB PCIe)", 75, 30, 200, 1400, 1),
    "gpu_1x_a100_sxm4": ("1x A100 (40 GB SXM4)", "A100 (40 GB SXM4)", 129, 30, 200, 512, 1),
    "gpu_1x_h100_pcie": ("1x H100 (80 GB PCIe)", "H100 (80 GB PCIe)", 249, 26, 200, 1024, 1),
    "gpu_1x_gh200": ("1x GH200 (96 GB)", "GH200 (96 GB)", 149, 64, 432, 4096, 1),
    "gpu_8x_h100_sxm5": ("8x H100 (80 GB SXM5)", "H100 (80 GB SXM5)", 2392, 208, 1800, 24780, 8),
}
REGIONS: dict[str, str] = {
    "us-east-1": "Virginia, USA",
    "us-west-1": "California, USA",
    "us-south-1": "Texas, USA",
}
BOOT_SECONDS = 240.0
TERMINATE_SECONDS = 30.0
LAUNCH_INTERVAL_SECONDS = 12.0
_NOT_LAUNCHED = {
    "available": False,
    "reason_code": "vm-has-not-launched",
    "reason_description": "The instance has not launched yet.",
}


def default_capacity(free: int = 2) -> dict[tuple[str, str], int]:
    return {(name, region): free for name in INSTANCE_TYPES for region in REGIONS}


class LambdaSim(CloudSim):
    api_prefix = "/api/v1"
    # Lambda Stack images: the user has sudo, Docker and the NVIDIA container runtime.
    machine_tools = ("vllm", "sudo", "docker")
    billing_increment_seconds = 60  # Lambda bills per minute, a started minute in full,
    bills_from_boot = True  # from when the instance is up

    def __init__(
        self,
        *,
        api_key: str,
        time_factor: float = 1.0,
        ssh_port: int | None = None,
        launch_interval_seconds: float = LAUNCH_INTERVAL_SECONDS,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("capacity", default_capacity())
        kwargs.setdefault("prices", {n: spec[2] / 100 for n, spec in INSTANCE_TYPES.items()})
        kwargs.setdefault("boot_seconds", BOOT_SECONDS)
        kwargs.setdefault("terminate_seconds", TERMINATE_SECONDS)
        super().__init__(lambda_doc(), api_keys={api_key}, time_factor=time_factor, **kwargs)
        self.ssh_port = ssh_port or free_port()
        self.launch_interval_seconds = launch_interval_seconds
        self.ssh_keys: dict[str, dict[str, str]] = {}  # name → {id, name, public_key}
        self._last_launch: dict[str, float] = {}
        self._octet = secrets.randbelow(200) + 20
        self._next_ip = 0

    # --- plumbing --------------------------------------------------------------------------

    def _key_of(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme == "Bearer":
            return value.strip()
        if scheme == "Basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return value.strip()
            return decoded.split(":", 1)[0] if ":" in decoded else value.strip()
        return ""

    def authorized(self, request: web.Request) -> bool:
        return self._key_of(request) in self.api_keys

    def error(self, status: int, code: str, message: str, suggestion: str = "") -> web.Response:
        codes = {
            401: "global/invalid-api-key",
            404: "global/object-does-not-exist",
            429: "global/rate-limited",
            500: "global/internal-error",
            503: "provider/internal-unavailable",
        }
        if "/" not in code:
            code = codes.get(status, "global/invalid-parameters")
        error: dict[str, str] = {"code": code, "message": message}
        if suggestion:
            error["suggestion"] = suggestion
        return web.json_response({"error": error}, status=status)

    def invalid(self, problems: list[str]) -> web.Response:
        return self.error(400, "global/invalid-parameters", f"Invalid request data: {problems[0]}")

    def ssh_port_for(self, machine: SimMachine) -> int:
        return self.ssh_port

    def _new_ip(self) -> str:
        self._next_ip += 1
        return f"127.{self._octet}.{self._next_ip // 250}.{self._next_ip % 250 + 1}"

    # --- views -----------------------------------------------------------------------------

    def _type_json(self, name: str) -> dict[str, Any]:
        desc, gpu_desc, _cents, vcpus, memory, storage, gpus = INSTANCE_TYPES[name]
        return {
            "name": name,
            "description": desc,
            "gpu_description": gpu_desc,
            "price_cents_per_hour": round(self.prices.get(name, 0.0) * 100),
            "specs": {"vcpus": vcpus, "memory_gib": memory, "storage_gib": storage, "gpus": gpus},
        }

    def instance_json(self, m: SimMachine) -> dict[str, Any]:
        status = {
            "running": "active",
            "stopped": "unhealthy",
            "unhealthy": "unhealthy",
            "terminating": "terminating",
        }.get(m.state, "booting")
        available = {"available": True}
        launched = status not in ("booting",)
        body: dict[str, Any] = {
            "id": m.id,
            "name": m.name,
            "status": status,
            "ssh_key_names": m.extra["ssh_key_names"],
            "file_system_names": [],
            "region": {"name": m.region, "description": REGIONS[m.region]},
            "instance_type": self._type_json(m.gpu),
            "actions": {
                "migrate": {"available": False, "reason_code": "vm-is-too-old"},
                "rebuild": available if launched else _NOT_LAUNCHED,
                "restart": available if launched else _NOT_LAUNCHED,
                "cold_reboot": available if launched else _NOT_LAUNCHED,
                "terminate": {"available": status != "terminating"},
            },
            "tags": m.extra.get("tags", []),
        }
        if status in ("active", "unhealthy"):
            body["ip"] = m.ip
            body["private_ip"] = "10.0.2." + m.ip.rsplit(".", 1)[1]
            body["hostname"] = m.ip.replace(".", "-")
        return body

    # --- handlers --------------------------------------------------------------------------

    async def instance_types(self, request: web.Request) -> web.Response:
        data = {
            name: {
                "instance_type": self._type_json(name),
                "regions_with_capacity_available": [
                    {"name": region, "description": description}
                    for region, description in REGIONS.items()
                    if self.free(name, region) > 0
                ],
            }
            for name in INSTANCE_TYPES
        }
        return web.json_response({"data": data})

    async def launch(self, request: web.Request) -> web.Response:
        body = request[JSON_BODY]
        key = self._key_of(request)
        now = time.monotonic()
        interval = self.scaled(self.launch_interval_seconds)
        last = self._last_launch.get(key)
        if last is not None and now - last < interval:
            return self.rate_limited(interval - (now - last))
        self._last_launch[key] = now
        names = body["ssh_key_names"]
        if len(names) != 1:
            return self.error(400, "global/invalid-parameters", "Exactly one SSH key is required.")
        if names[0] not in self.ssh_keys:
            return self.error(
                400, "global/object-does-not-exist", f"SSH key {names[0]!r} does not exist."
            )
        type_name, region = body["instance_type_name"], body["region_name"]
        if type_name not in INSTANCE_TYPES:
            return self.error(
                400, "global/object-does-not-exist", f"Instance type {type_name!r} does not exist."
            )
        if region not in REGIONS:
            return self.error(400, "global/invalid-parameters", f"Unknown region {region!r}.")
        if self.free(type_name, region) <= 0 or self.faults.refuses(type_name, region):
            return self.error(
                400,
                "instance-operations/launch/insufficient-capacity",
                "Not enough capacity to fulfill launch request.",
                "Try again later or choose another region or instance type.",
            )
        machine = SimMachine(
            id=secrets.token_hex(16),
            name=body.get("name", ""),
            gpu=type_name,
            gpu_count=INSTANCE_TYPES[type_name][6],
            region=region,
            price_per_hour=self.prices.get(type_name, 0.0),
            public_keys=[self.ssh_keys[names[0]]["public_key"]],
            created_at=time.time(),
            ready_at=now + self.scaled(self.boot_seconds),
            ip=self._new_ip(),
            extra={"ssh_key_names": names, "tags": body.get("tags", [])},
        )
        await self.add_machine(machine)
        await self.hold_if_asked()
        if self.faults.error_after_create > 0:
            self.faults.error_after_create -= 1
            return self.error(500, "global/internal-error", "An internal server error occurred.")
        return web.json_response({"data": {"instance_ids": [machine.id]}})

    async def list_instances(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [self.instance_json(m) for m in self.live_machines()]})

    async def get_instance(self, request: web.Request) -> web.Response:
        machine = self.machines.get(request.match_info["id"])
        if machine is None:
            return self.error(404, "", "Specified instance does not exist.")
        return web.json_response({"data": self.instance_json(machine)})

    async def terminate_instances(self, request: web.Request) -> web.Response:
        ids = request[JSON_BODY]["instance_ids"]
        missing = [i for i in ids if i not in self.machines]
        if missing:
            return self.error(404, "", "Specified instance does not exist.")
        done = []
        for instance_id in ids:
            machine = self.machines[instance_id]
            await self.terminate(machine)
            done.append(self.instance_json(machine) | {"status": "terminating"})
        return web.json_response({"data": {"terminated_instances": done}})

    async def list_keys(self, request: web.Request) -> web.Response:
        return web.json_response({"data": list(self.ssh_keys.values())})

    async def add_key(self, request: web.Request) -> web.Response:
        body = request[JSON_BODY]
        if body["name"] in self.ssh_keys:
            return self.error(400, "global/invalid-parameters", "SSH key name already in use.")
        if not body.get("public_key"):
            return self.error(400, "global/invalid-parameters", "Key generation is not simulated.")
        key = {"id": secrets.token_hex(16), "name": body["name"], "public_key": body["public_key"]}
        self.ssh_keys[body["name"]] = key
        return web.json_response({"data": key})

    async def delete_key(self, request: web.Request) -> web.Response:
        for name, key in list(self.ssh_keys.items()):
            if key["id"] == request.match_info["id"]:
                del self.ssh_keys[name]
                return web.json_response({"data": {}})
        return self.error(400, "global/invalid-parameters", "SSH key does not exist.")

    def routes(self) -> list[web.RouteDef]:
        p = self.api_prefix
        return [
            web.get(f"{p}/instance-types", self.instance_types),
            web.post(f"{p}/instance-operations/launch", self.launch),
            web.post(f"{p}/instance-operations/terminate", self.terminate_instances),
            web.get(f"{p}/instances", self.list_instances),
            web.get(f"{p}/instances/{{id}}", self.get_instance),
            web.get(f"{p}/ssh-keys", self.list_keys),
            web.post(f"{p}/ssh-keys", self.add_key),
            web.delete(f"{p}/ssh-keys/{{id}}", self.delete_key),
        ]


async def start_lambda_sim(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    api_key: str,
    ssh_keys: dict[str, str] | None = None,
    **options: Any,
) -> RunningSim:
    """Serve a Lambda Cloud simulator; ``LAMBDA_CLOUD_BASE_URL`` is ``.url`` (ends ``/api/v1``).

    ``ssh_keys`` (name → public key line) are registered up front, as a user would in the console.
    """
    sim = LambdaSim(api_key=api_key, **options)
    for name, public_key in (ssh_keys or {}).items():
        sim.ssh_keys[name] = {"id": secrets.token_hex(16), "name": name, "public_key": public_key}
    return await serve(sim, sim.routes(), host, port, "/api/v1")
