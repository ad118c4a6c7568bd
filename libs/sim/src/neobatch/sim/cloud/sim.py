"""What the RunPod and Lambda Cloud simulators share: machines that are real SSH hosts, capacity,
prices, a time factor, fault switches, an admin API and a recording of every API exchange.

Each created machine becomes a loopback SSH host (``neobatch.sim.ssh_host``) once its boot delay
(scaled by ``time_factor``) has passed, authorized for the public key the client injected.
State advances lazily on every request, so nothing runs between requests.

Admin API (no auth, under ``/_sim``): see ``admin.py``; ``GET /_sim/commands`` lists every
``vllm``/``docker`` command the machines' tools ran: ``{"commands": [{"machine", "tool", "argv"}]}``.

GPU machines: each machine's SSH sessions find its ``bin/`` first on ``PATH`` with the tools of
``neobatch.sim.machine_tools``: ``vllm`` on every machine (``vllm serve`` runs the engine
simulator, or the real engine when the simulator is given ``real_engine_python``), plus ``sudo`` and ``docker`` where the provider's image has them (Lambda). Engines a
machine started die with it (terminated, stopped or unhealthy).

Fault switches (``POST /_sim/faults``): ``no_capacity``, ``refuse_launch``, ``error_after_create``,
``stuck_boot``, ``burst_5xx``, ``storm_429``, ``hold_create`` (see ``Faults``), and for machines
that boot from then on ``no_docker`` (``sudo docker`` is "command not found") and
``no_nvidia_runtime`` (Docker without the NVIDIA runtime: ``--gpus`` fails).

Billing: every machine is billed to its terminate call (a stop does not end it) from its create
call (RunPod) or from the end of its boot (Lambda, ``bills_from_boot``), at its price, in the
provider's increment (``billing_increment_seconds``: RunPod 1 s, Lambda 60 s, a started one in
full). ``GET /_sim/billing`` (sim-only) reads the records, and each
record is also appended as a JSON line to ``billing_file`` when the machine is terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from neobatch.sim import machine_tools
from neobatch.sim.cloud.admin import admin_routes
from neobatch.sim.cloud.billing import Ledger
from neobatch.sim.cloud.specs import OpenApiDoc
from neobatch.sim.ssh_host import SSHHost, start_ssh_host

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The parsed JSON body of a request, for the handlers (validated by the middleware first).
JSON_BODY: web.RequestKey[Any] = web.RequestKey("json_body", object)


@dataclass
class Faults:
    no_capacity: bool = False  # every type/region has (and lists) zero capacity
    refuse_launch: list[str] = field(default_factory=list)  # "GPU@REGION" or "*": listed, refused
    error_after_create: int = 0  # the next N creates make the machine, then answer 500
    stuck_boot: bool = False  # machines created from now on never finish booting
    burst_5xx: int = 0  # the next N API calls answer 5xx
    storm_429: int = 0  # the next N API calls answer 429
    hold_create: bool = False  # a create makes the machine, then waits for /_sim/release-hold
    no_docker: bool = False  # machines booting from now on have no docker (machines with docker)
    no_nvidia_runtime: bool = False  # ... have docker without the NVIDIA container runtime

    def refuses(self, gpu: str, region: str) -> bool:
        return "*" in self.refuse_launch or f"{gpu}@{region}" in self.refuse_launch


@dataclass
class SimMachine:
    id: str
    name: str
    gpu: str
    gpu_count: int
    region: str
    price_per_hour: float
    public_keys: list[str]
    created_at: float
    ready_at: float | None  # monotonic; None = never (stuck boot)
    ip: str
    state: str = "booting"  # booting, running, stopped, unhealthy, terminating, terminated
    port: int = 0  # the SSH host's port once running
    extra: dict[str, Any] = field(default_factory=dict)  # provider-specific request fields
    terminate_done_at: float | None = None
    ssh: SSHHost | None = None
    workdir: str = ""
    # The machine's own loopback address: its engines listen there and forwards to its
    # 127.0.0.1 reach them, so machines of one batch may all use the template's port.
    address: str = ""

    @property
    def live(self) -> bool:
        return self.state not in ("terminated",)

    def summary(self) -> dict[str, Any]:
        keys = ("id", "name", "gpu", "gpu_count", "region", "state", "ip", "port")
        return {key: getattr(self, key) for key in keys}


@dataclass
class Exchange:
    method: str
    path: str
    request: Any
    status: int
    content_type: str
    response: Any


class CloudSim:
    """State and behaviour common to both simulators; subclasses add the provider's routes."""

    api_prefix = "/"
    # The command-line tools on this provider's machines (``machine_tools``).
    machine_tools: tuple[str, ...] = ("vllm",)
    # The provider's billing increment (RunPod bills per second, Lambda per minute).
    billing_increment_seconds: int = 1
    # True: billing begins when the machine has booted (Lambda), not at the create call (RunPod).
    bills_from_boot: bool = False

    def __init__(
        self,
        doc: OpenApiDoc,
        *,
        api_keys: set[str],
        capacity: dict[tuple[str, str], int],
        prices: dict[str, float],
        time_factor: float = 1.0,
        boot_seconds: float = 30.0,
        terminate_seconds: float = 0.0,
        validate_responses: bool = True,
        real_engine_python: str | None = None,
    ) -> None:
        self.doc = doc
        # Machines whose `vllm serve` / `docker run` start the real engine (vLLM's CPU build
        # in this venv, `neobatch.sim.real_engine`) instead of the engine simulator.
        self.real_engine_python = real_engine_python
        self.api_keys = api_keys
        self.capacity = dict(capacity)
        self.prices = dict(prices)
        self.time_factor = time_factor
        self.boot_seconds = boot_seconds
        self.terminate_seconds = terminate_seconds
        self.validate_responses = validate_responses
        self.faults = Faults()
        self.machines: dict[str, SimMachine] = {}
        self.exchanges: list[Exchange] = []
        self.creates = 0  # create calls that made a machine
        self._address_octet = secrets.randbelow(200) + 20
        self._addresses = 0
        self._hold = asyncio.Event()
        self._lock = asyncio.Lock()
        # Survives the machines (whose workdirs go with them): what their tools were asked to do.
        self._records_dir = tempfile.mkdtemp(prefix="sim-commands-")
        self.commands_file = f"{self._records_dir}/commands.jsonl"
        self.billing_file = f"{self._records_dir}/billing.jsonl"
        self.ledger = Ledger(self.billing_increment_seconds, self.billing_file)

    # --- state ---------------------------------------------------------------------------

    def free(self, gpu: str, region: str) -> int:
        return 0 if self.faults.no_capacity else self.capacity.get((gpu, region), 0)

    def scaled(self, seconds: float) -> float:
        return seconds * self.time_factor

    def live_machines(self) -> list[SimMachine]:
        return [m for m in self.machines.values() if m.state != "terminated"]

    async def add_machine(self, machine: SimMachine) -> None:
        self.capacity[(machine.gpu, machine.region)] = (
            self.capacity.get((machine.gpu, machine.region), 0) - 1
        )
        if self.faults.stuck_boot:
            machine.ready_at = None
        self.machines[machine.id] = machine
        self.creates += 1
        self.ledger.opened(machine, bills_from_boot=self.bills_from_boot)

    async def hold_if_asked(self) -> None:
        """The "create reached the provider but the answer never came back" window."""
        if self.faults.hold_create:
            self._hold.clear()
            await self._hold.wait()

    async def advance(self) -> None:
        """Bring every machine up to date with the clock (boots finish, terminations end)."""
        async with self._lock:
            now = time.monotonic()
            for machine in list(self.machines.values()):
                due = machine.ready_at is not None and now >= machine.ready_at
                if machine.state == "booting" and due:
                    await self._start_ssh(machine)
                    machine.state = "running"
                    if self.bills_from_boot:
                        self.ledger.booted(machine.id, now - (machine.ready_at or now))
                if machine.state == "terminating" and now >= (machine.terminate_done_at or 0):
                    machine.state = "terminated"
                    del self.machines[machine.id]

    async def _start_ssh(self, machine: SimMachine) -> None:
        machine.workdir = tempfile.mkdtemp(prefix=f"sim-{machine.id[:8]}-")
        machine.address = machine.address or (
            machine.ip if machine.ip != "127.0.0.1" else self._own_address()
        )
        has_docker = "docker" in self.machine_tools and not self.faults.no_docker
        machine_tools.install(
            machine.workdir,
            machine=machine.id,
            tools=self.machine_tools,
            records=self.commands_file,
            docker=has_docker,
            nvidia=has_docker and not self.faults.no_nvidia_runtime,
            real_engine_python=self.real_engine_python,
            address=machine.address,
        )
        machine.ssh = await start_ssh_host(
            machine.ip,
            self.ssh_port_for(machine),
            machine.public_keys,
            None,
            machine.workdir,
            env=machine_tools.machine_env(machine.workdir, machine.address),
            loopback_address=machine.address,
        )
        machine.port = machine.ssh.port

    def _own_address(self) -> str:
        """A loopback address of its own for a machine reached at 127.0.0.1 (RunPod's)."""
        self._addresses += 1
        n = self._addresses
        return f"127.{self._address_octet}.{n // 250}.{n % 250 + 1}"

    def ssh_port_for(self, machine: SimMachine) -> int:
        return 0

    async def stop_ssh(self, machine: SimMachine) -> None:
        if machine.ssh is not None:
            await machine.ssh.close()
            machine.ssh = None
        if machine.workdir:
            # The machine is gone or off: so are the engines it was running.
            machine_tools.kill_machine_processes(machine.workdir)
            shutil.rmtree(machine.workdir, ignore_errors=True)
            machine.workdir = ""

    async def terminate(self, machine: SimMachine) -> None:
        """Free the machine's capacity and stop its SSH host; it leaves after terminate_seconds."""
        if machine.state in ("terminating", "terminated"):
            return
        self.ledger.terminated(machine.id)
        await self.stop_ssh(machine)
        key = (machine.gpu, machine.region)
        self.capacity[key] = self.capacity.get(key, 0) + 1
        machine.state = "terminating"
        machine.terminate_done_at = time.monotonic() + self.scaled(self.terminate_seconds)
        if self.terminate_seconds <= 0:
            machine.state = "terminated"
            self.machines.pop(machine.id, None)

    def billing(self) -> list[dict[str, Any]]:
        return self.ledger.report()

    async def close(self) -> None:
        for machine in list(self.machines.values()):
            await self.stop_ssh(machine)
        shutil.rmtree(self._records_dir, ignore_errors=True)

    def commands(self) -> list[dict[str, Any]]:
        return machine_tools.read_records(self.commands_file)

    # --- HTTP plumbing ---------------------------------------------------------------------

    def error(self, status: int, code: str, message: str) -> web.Response:
        raise NotImplementedError

    def authorized(self, request: web.Request) -> bool:
        raise NotImplementedError

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sim"):
            return await handler(request)
        body: Any = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = "<invalid json>"
        response = await self._answer(request, handler, body)
        payload: Any = None
        if isinstance(response, web.Response) and response.body:
            with contextlib.suppress(ValueError, TypeError):
                payload = json.loads(response.body)  # type: ignore[arg-type]
        self.exchanges.append(
            Exchange(
                request.method,
                request.path,
                body,
                response.status,
                response.content_type,
                payload,
            )
        )
        if self.validate_responses:
            problems = self.doc.response_errors(
                request.method, request.path, response.status, response.content_type, payload
            )
            if problems:  # a simulator bug: say so loudly rather than lie to the client
                raise web.HTTPInternalServerError(text=f"simulator response invalid: {problems}")
        return response

    async def _answer(
        self, request: web.Request, handler: Handler, body: Any
    ) -> web.StreamResponse:
        if not self.authorized(request):
            return self.error(401, "unauthorized", "API key was invalid, expired, or deleted.")
        if self.faults.storm_429 > 0:
            self.faults.storm_429 -= 1
            return self.rate_limited(1)
        if self.faults.burst_5xx > 0:
            self.faults.burst_5xx -= 1
            return self.error(503, "unavailable", "Service temporarily unavailable.")
        if self.doc.operation(request.method, request.path) is None:
            return self.error(404, "not-found", f"no route {request.method} {request.path}")
        if request.method in ("POST", "PUT", "PATCH"):
            problems = self.doc.request_errors(request.method, request.path, body)
            if problems:
                return self.invalid(problems)
        await self.advance()
        request[JSON_BODY] = body
        return await handler(request)

    def rate_limited(self, retry_after: float) -> web.Response:
        response = self.error(429, "rate-limited", "Too many requests.")
        response.headers["Retry-After"] = str(max(1, round(retry_after)))
        return response

    def invalid(self, problems: list[str]) -> web.Response:
        raise NotImplementedError

    # --- what the admin API (``admin.py``) reads and switches ----------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "faults": asdict(self.faults),
            # Billed, serving machines; ones already terminating are listed apart.
            "machines": [m.summary() for m in self.live_machines() if m.state != "terminating"],
            "terminating": [m.id for m in self.live_machines() if m.state == "terminating"],
            "creates": self.creates,
            "capacity": [
                {"gpu": gpu, "region": region, "free": free}
                for (gpu, region), free in sorted(self.capacity.items())
            ],
        }

    def release_hold(self) -> None:
        """End the ``hold_create`` window: the held create answers, later ones do not wait."""
        self.faults.hold_create = False
        self._hold.set()


@dataclass
class RunningSim:
    """A simulator serving on a port; ``url`` is its base URL (what the provider is given)."""

    sim: CloudSim
    runner: web.AppRunner
    host: str
    port: int
    base_path: str = ""

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.root + self.base_path

    async def stop(self) -> None:
        self.sim._hold.set()  # a create still held must not keep the server from closing
        await self.sim.close()
        await self.runner.cleanup()


async def serve(
    sim: CloudSim, routes: list[web.RouteDef], host: str, port: int, base_path: str
) -> RunningSim:
    app = web.Application(middlewares=[sim.middleware])
    app.add_routes(routes + admin_routes(sim))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return RunningSim(sim, runner, host, int(bound), base_path)
