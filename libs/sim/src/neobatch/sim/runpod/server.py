"""RunPod REST v2 simulator (``https://api.runpod.io`` + ``/v2/...``).

Implements what the ``runpod`` provider uses: ``GET /v2/catalog/gpus`` (with
``include=AVAILABILITY&product=POD``), ``POST/GET /v2/pods``, ``GET/DELETE /v2/pods/{id}`` and
``POST /v2/pods/{id}/action``. Errors are RFC 9457 ``application/problem+json``; requests are
validated against the saved OpenAPI document (422 with ``errors`` on violation). Recorded quirks
(``reference/provider-apis.md`` §1.12): no capacity is a 400 problem; the pod reports ``RUNNING``
before its ports exist (``ssh.direct`` stays null until the container is up); a fault makes
``POST /v2/pods`` answer 500 after the pod was created. The SSH key reaches the pod through
``env.PUBLIC_KEY``; ``ssh.direct`` carries ``127.0.0.1`` and the mapped port of the pod's SSH host.
"""

from __future__ import annotations

import secrets
import string
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from neobatch.sim.cloud.sim import JSON_BODY, CloudSim, RunningSim, SimMachine, serve
from neobatch.sim.cloud.specs import runpod_doc

# id → (display name, memory GB, secure price per GPU per hour, max GPUs per pod)
GPU_TYPES: dict[str, tuple[str, int, float, int]] = {
    "NVIDIA H100 80GB HBM3": ("H100 SXM", 80, 2.69, 8),
    "NVIDIA H100 PCIe": ("H100 PCIe", 80, 2.39, 8),
    "NVIDIA A100 80GB PCIe": ("A100 PCIe", 80, 1.64, 8),
    "NVIDIA A40": ("A40", 48, 0.40, 8),
    "NVIDIA L4": ("L4", 24, 0.43, 8),
    "NVIDIA GeForce RTX 4090": ("RTX 4090", 24, 0.69, 8),
}
DATA_CENTERS: dict[str, str] = {
    "US-TX-3": "United States (Texas) 3",
    "US-KS-2": "United States (Kansas) 2",
    "EU-RO-1": "Europe (Romania) 1",
}
NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
BOOT_SECONDS = 30.0  # create → ports published (fake default, reference §1.11)
_ID_CHARS = string.ascii_lowercase + string.digits


def default_capacity(free: int = 4) -> dict[tuple[str, str], int]:
    return {(gpu, dc): free for gpu in GPU_TYPES for dc in DATA_CENTERS}


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _level(free: int) -> str:
    return "NONE" if free <= 0 else "LOW" if free <= 2 else "MEDIUM" if free <= 5 else "HIGH"


class RunPodSim(CloudSim):
    def __init__(self, *, api_key: str, time_factor: float = 1.0, **kwargs: Any) -> None:
        kwargs.setdefault("capacity", default_capacity())
        kwargs.setdefault("prices", {gpu: spec[2] for gpu, spec in GPU_TYPES.items()})
        kwargs.setdefault("boot_seconds", BOOT_SECONDS)
        super().__init__(runpod_doc(), api_keys={api_key}, time_factor=time_factor, **kwargs)

    # --- plumbing --------------------------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:].strip() in self.api_keys

    def problem(self, status: int, detail: str, errors: list[str] | None = None) -> web.Response:
        titles = {
            400: "Bad Request",
            401: "Unauthorized",
            404: "Not Found",
            422: "Unprocessable Entity",
            429: "Too Many Requests",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }
        body: dict[str, Any] = {"title": titles.get(status, "Error"), "status": status}
        body["detail"] = detail
        if errors:
            body["errors"] = errors
        return web.json_response(body, status=status, content_type="application/problem+json")

    def error(self, status: int, code: str, message: str) -> web.Response:
        if status == 401:
            message = "missing bearer token"
        if status == 429:
            message = "rate limit exceeded for the minute window"
        return self.problem(status, message)

    def invalid(self, problems: list[str]) -> web.Response:
        return self.problem(422, "Request validation failed.", problems)

    # --- views -----------------------------------------------------------------------------

    def pod_json(self, m: SimMachine) -> dict[str, Any]:
        now = time.monotonic()
        boot = self.scaled(self.boot_seconds)
        status = {
            "running": "RUNNING",
            "stopped": "EXITED",
            "unhealthy": "ERROR",
            "terminating": "TERMINATED",
        }.get(m.state, "PROVISIONING")
        if m.state == "booting" and m.ready_at is not None and now >= m.ready_at - boot / 2:
            status = "RUNNING"  # recorded quirk: RUNNING before the ports exist
        up = m.state == "running"
        direct = None
        if up:
            direct = {
                "host": m.ip,
                "port": m.port,
                "username": "root",
                "command": f"ssh root@{m.ip} -p {m.port}",
            }
        proxy_user = f"{m.id}-64411eb2"
        actions = {"RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"]}
        return {
            "id": m.id,
            "name": m.name,
            "image": m.extra.get("image", ""),
            "args": "",
            "disk": 50,
            "ports": m.extra.get("ports", []),
            "env": m.extra.get("env", {}),
            "registry": None,
            "status": status,
            "actions": actions.get(status, ["terminate"]),
            "mounts": {},
            "gpu": {"id": m.gpu, "count": m.gpu_count},
            "cloud": m.extra.get("cloud", "SECURE"),
            "dataCenterId": m.region,
            "cudaVersion": "12.8",
            "ssh": {
                "proxy": {
                    "host": "ssh.runpod.io",
                    "port": 22,
                    "username": proxy_user,
                    "command": f"ssh {proxy_user}@ssh.runpod.io",
                },
                "direct": direct,
            },
            "template": None,
            "cost": round(m.price_per_hour, 4) if status == "RUNNING" else 0.0,
            "locked": False,
            "globalNetworking": {"enabled": False},
            "runtime": {
                "uptime": int(now - (m.ready_at or now)),
                "ports": [{"private": 22, "public": m.port, "type": "tcp", "ip": m.ip}],
            }
            if up
            else None,
            "createdAt": _iso(m.created_at),
            "startedAt": _iso(m.created_at) if up else None,
        }

    # --- handlers --------------------------------------------------------------------------

    async def list_gpus(self, request: web.Request) -> web.Response:
        include = request.query.get("include", "")
        count = int(request.query.get("count", "1"))
        gpus = []
        for gpu, (name, memory, _price, max_count) in GPU_TYPES.items():
            price = self.prices.get(gpu, 0.0)
            item: dict[str, Any] = {
                "id": gpu,
                "name": name,
                "pool": None,
                "manufacturer": "NVIDIA",
                "memory": memory,
                "secure": True,
                "community": True,
                "price": {"secure": price, "community": round(price * 0.7, 2)},
                "maxCount": {"secure": max_count, "community": max_count},
            }
            if "AVAILABILITY" in include:
                fits = count <= max_count
                levels = [
                    {"id": dc, "name": DATA_CENTERS[dc], "availability": _level(free)}
                    for dc in DATA_CENTERS
                    if fits and (free := self.free(gpu, dc)) > 0
                ]
                best = max((self.free(gpu, dc) for dc in DATA_CENTERS), default=0)
                item["availability"] = _level(best if fits else 0)
                if levels:
                    item["dataCenters"] = levels
            gpus.append(item)
        return web.json_response({"gpus": gpus})

    async def create_pod(self, request: web.Request) -> web.Response:
        body = request[JSON_BODY]
        gpu = body.get("gpu")
        if gpu is None or "cpu" in body:
            return self.problem(400, "exactly one of gpu or cpu must be set")
        if gpu["id"] not in GPU_TYPES:
            return self.problem(400, f"unknown GPU type {gpu['id']!r}")
        count = int(gpu.get("count", 1))
        if count > GPU_TYPES[gpu["id"]][3]:
            return self.problem(400, NO_CAPACITY)
        wanted = body.get("dataCenterIds") or list(DATA_CENTERS)
        unknown = [dc for dc in wanted if dc not in DATA_CENTERS]
        if unknown:
            return self.problem(400, f"unknown data center {unknown[0]!r}")
        region = next(
            (
                dc
                for dc in wanted
                if self.free(gpu["id"], dc) > 0 and not self.faults.refuses(gpu["id"], dc)
            ),
            None,
        )
        if region is None:
            return self.problem(400, NO_CAPACITY)
        env = dict(body.get("env") or {})
        keys = [env[k] for k in ("PUBLIC_KEY", "SSH_PUBLIC_KEY") if env.get(k)]
        now = time.monotonic()
        machine = SimMachine(
            id="".join(secrets.choice(_ID_CHARS) for _ in range(14)),
            name=body["name"],
            gpu=gpu["id"],
            gpu_count=count,
            region=region,
            price_per_hour=self.prices.get(gpu["id"], 0.0) * count,
            public_keys=keys,
            created_at=time.time(),
            ready_at=now + self.scaled(self.boot_seconds),
            ip="127.0.0.1",
            extra={
                "image": body.get("image", ""),
                "env": env,
                "ports": body.get("ports") or ["8888/http", "22/tcp"],
                "cloud": body.get("cloud", "SECURE"),
            },
        )
        if "22/tcp" not in machine.extra["ports"]:
            machine.ready_at = None  # no 22/tcp mapping: ssh.direct never appears
        await self.add_machine(machine)
        await self.hold_if_asked()
        if self.faults.error_after_create > 0:
            self.faults.error_after_create -= 1
            return self.problem(
                500,
                "create pod: Something went wrong. Please try again later or contact support.",
            )
        return web.json_response(self.pod_json(machine), status=201)

    async def list_pods(self, request: web.Request) -> web.Response:
        return web.json_response({"pods": [self.pod_json(m) for m in self.live_machines()]})

    def _find(self, request: web.Request) -> SimMachine | None:
        machine = self.machines.get(request.match_info["id"])
        return machine if machine is not None and machine.state != "terminating" else None

    async def get_pod(self, request: web.Request) -> web.Response:
        machine = self._find(request)
        if machine is None:
            return self.problem(404, "pod not found")
        return web.json_response(self.pod_json(machine))

    async def delete_pod(self, request: web.Request) -> web.Response:
        machine = self._find(request)
        if machine is None:
            return self.problem(404, "pod not found")
        await self.terminate(machine)
        return web.Response(status=204)

    async def pod_action(self, request: web.Request) -> web.Response:
        machine = self._find(request)
        if machine is None:
            return self.problem(404, "pod not found")
        action = request[JSON_BODY]["action"]
        if action == "terminate":
            await self.terminate(machine)
            return web.Response(status=204)
        if action == "stop":
            await self.stop_ssh(machine)
            machine.state = "stopped"
        elif action in ("start", "restart"):
            await self.stop_ssh(machine)
            machine.state = "booting"
            machine.ready_at = time.monotonic() + self.scaled(self.boot_seconds)
        return web.json_response(self.pod_json(machine))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v2/catalog/gpus", self.list_gpus),
            web.post("/v2/pods", self.create_pod),
            web.get("/v2/pods", self.list_pods),
            web.get("/v2/pods/{id}", self.get_pod),
            web.delete("/v2/pods/{id}", self.delete_pod),
            web.post("/v2/pods/{id}/action", self.pod_action),
        ]


async def start_runpod_sim(
    host: str = "127.0.0.1", port: int = 0, *, api_key: str, **options: Any
) -> RunningSim:
    """Serve a RunPod v2 simulator; the provider's ``RUNPOD_BASE_URL`` is ``.url``."""
    sim = RunPodSim(api_key=api_key, **options)
    return await serve(sim, sim.routes(), host, port, "")
