"""The simulators' admin API under ``/_sim`` (no auth): what tests and chaos runs switch and read.

``GET /_sim/state``; ``POST /_sim/faults`` (JSON merged into ``Faults``); ``POST /_sim/capacity``
``{"gpu", "region", "free"}``; ``POST /_sim/prices`` ``{"<gpu>": price}``;
``POST /_sim/machines/{id}/delete`` (deleted behind the client's back);
``POST /_sim/machines/{id}/state`` ``{"state": "stopped"|"unhealthy"}``; ``POST /_sim/release-hold``;
``GET /_sim/commands`` (every ``vllm``/``docker`` command the machines' tools ran);
``GET /_sim/billing`` (``{"machines": [...]}``: what the provider bills each machine, see ``sim.py``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from neobatch.sim.cloud.sim import CloudSim


def admin_routes(sim: CloudSim) -> list[web.RouteDef]:
    admin = _Admin(sim)
    return [
        web.get("/_sim/state", admin.state),
        web.post("/_sim/faults", admin.set_faults),
        web.post("/_sim/capacity", admin.set_capacity),
        web.post("/_sim/prices", admin.set_prices),
        web.post("/_sim/machines/{id}/delete", admin.delete_behind_back),
        web.post("/_sim/machines/{id}/state", admin.set_state),
        web.post("/_sim/release-hold", admin.release_hold),
        web.get("/_sim/commands", admin.commands),
        web.get("/_sim/billing", admin.billing),
    ]


class _Admin:
    def __init__(self, sim: CloudSim) -> None:
        self.sim = sim

    async def state(self, request: web.Request) -> web.Response:
        await self.sim.advance()
        return web.json_response(self.sim.state())

    async def set_faults(self, request: web.Request) -> web.Response:
        faults = self.sim.faults
        changes = await request.json()
        for key, value in changes.items():
            if not hasattr(faults, key):
                return web.json_response({"error": f"unknown fault {key!r}"}, status=400)
            setattr(faults, key, value)
        return web.json_response(asdict(faults))

    async def set_capacity(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.sim.capacity[(body["gpu"], body["region"])] = int(body["free"])
        return web.json_response(self.sim.state())

    async def set_prices(self, request: web.Request) -> web.Response:
        self.sim.prices.update({k: float(v) for k, v in (await request.json()).items()})
        return web.json_response(self.sim.prices)

    async def delete_behind_back(self, request: web.Request) -> web.Response:
        machine = self.sim.machines.get(request.match_info["id"])
        if machine is None:
            return web.json_response({"error": "no such machine"}, status=404)
        await self.sim.terminate(machine)
        machine.state = "terminated"
        self.sim.machines.pop(machine.id, None)
        return web.json_response({"deleted": machine.id})

    async def set_state(self, request: web.Request) -> web.Response:
        machine = self.sim.machines.get(request.match_info["id"])
        if machine is None:
            return web.json_response({"error": "no such machine"}, status=404)
        state = (await request.json())["state"]
        if state in ("stopped", "unhealthy"):
            await self.sim.stop_ssh(machine)
        machine.state = state
        return web.json_response(machine.summary())

    async def commands(self, request: web.Request) -> web.Response:
        return web.json_response({"commands": self.sim.commands()})

    async def billing(self, request: web.Request) -> web.Response:
        return web.json_response({"machines": self.sim.billing()})

    async def release_hold(self, request: web.Request) -> web.Response:
        self.sim.release_hold()
        return web.json_response({"released": True})
