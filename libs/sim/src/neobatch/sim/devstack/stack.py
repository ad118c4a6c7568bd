"""``start_stack`` and the ``Stack`` it returns: start every component, check it came up, stop it.

``start_stack`` goes in named steps: plan the components and their environment, adopt what an
earlier ``up`` left running, check the ports, start the rest in order, wait for the console's
``/healthz`` and for every process to survive a moment. On any failure everything this call
started is stopped again and ``StackError`` names the failing component with its log tail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from neobatch.sim import procs
from neobatch.sim.devstack.clouds import SimSpec, cloud_sims
from neobatch.sim.devstack.components import (
    MONGO,
    NATS,
    SERVICE_MODULES,
    SERVICES,
    SSH_HOST,
    ensure_ssh_keys,
    health_port_var,
    local_nats_url,
    service_env,
    spawn_component,
    start_component,
)
from neobatch.sim.devstack.layout import (
    Ports,
    RunLayout,
    StackError,
    atomic_write,
    read_env_file,
    write_env_file,
)
from neobatch.sim.devstack.processes import (
    DEFAULT_STOP_TIMEOUT,
    AdoptedProcess,
    ProcessHandle,
    running_pid,
    stop_tiers,
    sweep_marked,
)
from neobatch.sim.devstack.readiness import indent, log_tail, settle, wait_console_healthy
from neobatch.sim.testing.servers import LOOPBACK, ManagedProcess, port_in_use, wait_listening

DEFAULT_START_TIMEOUT = 60.0
# How long every process must survive after the console is healthy, unless every service it
# started is ready sooner. Services that cannot reach NATS or MongoDB, or fail on bad settings,
# usually die within this window.
SETTLE_SECONDS = 1.5

Report = Callable[[str], None]


def _silent(_message: str) -> None:
    pass


@dataclass
class Stack:
    """A started (or adopted) stack; ``stop()`` ends every process and removes the pid files."""

    run_dir: Path
    ports: Ports
    env: dict[str, str]
    processes: dict[str, ProcessHandle] = field(default_factory=dict)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    @property
    def console_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.console}"

    def health_url(self, name: str) -> str:
        """Base URL of a service's /healthz, /readyz and /metrics."""
        if name == "console":
            return self.console_url
        return f"http://{LOOPBACK}:{self.env[health_port_var(name)]}"

    @property
    def api_key(self) -> str:
        return self.env["NEOBATCH_API_KEY"]

    @property
    def operator_key(self) -> str:
        """The operator key (models, templates): NEOBATCH_OPERATOR_API_KEY of the console."""
        return self.env["NEOBATCH_OPERATOR_API_KEY"]

    @property
    def nats_url(self) -> str:
        return self.env["NATS_URL"]

    @property
    def mongo_url(self) -> str:
        return self.env["MONGO_URL"]

    def log_path(self, name: str) -> Path:
        return self.layout.log_file(name)

    def dead_components(self) -> list[str]:
        return [name for name, handle in self.processes.items() if not handle.alive()]

    def stop(self, timeout_seconds: float = DEFAULT_STOP_TIMEOUT, report: Report = _silent) -> None:
        """The services together first (the runtime-agent stops its engines through the SSH host
        or a simulator, and every service needs nats-server and the database until it ends),
        then the servers together: secantus alone takes 2 s to stop."""
        for tier in stop_tiers(list(self.processes)):
            handles = {name: self.processes[name] for name in tier}
            alive = {name: handle.alive() for name, handle in handles.items()}
            with ThreadPoolExecutor(max_workers=len(handles)) as pool:
                list(pool.map(lambda handle: handle.stop(timeout_seconds), handles.values()))
            for name, handle in handles.items():
                if alive[name]:
                    report(f"stopped {name} (pid {handle.pid})")
                with contextlib.suppress(FileNotFoundError):
                    self.layout.pid_file(name).unlink()
        self.processes.clear()
        for pid in sweep_marked(self.run_dir):
            report(f"stopped leftover process {pid} started by this stack")
        with contextlib.suppress(FileNotFoundError):
            self.layout.stack_env.unlink()

    def kill(self, name: str) -> None:
        """SIGKILL one component, as a crash would: no shutdown code runs (chaos tests)."""
        handle = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.pid, signal.SIGKILL)
        procs.wait_gone(handle.pid, DEFAULT_STOP_TIMEOUT)
        handle.stop(DEFAULT_STOP_TIMEOUT)  # reaps it and anything left in its group

    def restart(self, name: str, timeout_seconds: float = DEFAULT_START_TIMEOUT) -> None:
        """Start one component again (after `kill` or a stop) with the stack's settings."""
        old = self.processes.get(name)
        if old is not None and old.alive():
            old.stop(DEFAULT_STOP_TIMEOUT)
        handle = start_component(name, self.layout, self.ports, self.env, timeout_seconds)
        self.processes[name] = handle
        atomic_write(self.layout.pid_file(name), f"{handle.pid}\n")

    def env_file_values(self) -> dict[str, str]:
        return {
            "NEOBATCH_CONSOLE_URL": self.console_url,
            "NEOBATCH_API_KEY": self.api_key,
            "NEOBATCH_OPERATOR_KEY": self.operator_key,
            "NATS_URL": self.nats_url,
            "MONGO_URL": self.mongo_url,
            "NEOBATCH_SSH_POOL": self.env.get("NEOBATCH_SSH_POOL", ""),
            "NEOBATCH_SSH_KEY_FILE": self.env.get("NEOBATCH_SSH_KEY_FILE", ""),
            **{env: str(getattr(self.ports, attr)) for attr, env in Ports.ENV_NAMES.items()},
        }

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_stack(
    run_dir: str | os.PathLike[str],
    ports: Ports,
    extra_env: Mapping[str, str] | None = None,
    *,
    services: Sequence[str] = SERVICES,
    nats_url: str | None = None,
    mongo_url: str | None = None,
    timeout_seconds: float = DEFAULT_START_TIMEOUT,
    adopt_running: bool = False,
    report: Report = _silent,
) -> Stack:
    """Start the stack into ``run_dir`` and return its handles.

    ``services`` selects which of the four services to run (in the fixed order); pass ``()`` for
    the infrastructure alone. Given ``nats_url``/``mongo_url``, those servers are used instead of
    starting our own. With ``adopt_running`` (the CLI), components whose pid file names a live
    process are kept rather than started again. On any failure everything this call started is
    stopped again and StackError carries the reason and the failing component's log tail.
    """
    layout = RunLayout(Path(run_dir).resolve())
    layout.make_dirs()
    # Ports named in extra_env (a test's NEOBATCH_RUNPOD_SIM_PORT) are the stack's ports too:
    # checked free, recorded in stack.env, what the simulators listen on.
    ports = ports.overridden(extra_env or {})
    plan = plan_stack(layout, ports, extra_env, services, nats_url, mongo_url)
    adopted = _adopt(layout, plan.components, ports) if adopt_running else {}
    _check_ports_free(ports, [name for name in plan.components if name not in adopted])
    stack = Stack(run_dir=layout.root, ports=ports, env=plan.env)
    startup = _Startup(stack, plan.sims, timeout_seconds, report)
    try:
        startup.start_in_order(plan.components, adopted)
        startup.wait_until_up()
    except BaseException as error:
        failure = startup.roll_back(error)
        if failure is None:
            raise
        raise failure from error
    write_env_file(layout.stack_env, stack.env_file_values())
    return stack


@dataclass(frozen=True)
class StackPlan:
    components: list[str]  # in start order
    env: dict[str, str]  # what the services get
    sims: dict[str, SimSpec]  # the cloud simulators among the components


def plan_stack(
    layout: RunLayout,
    ports: Ports,
    extra_env: Mapping[str, str] | None,
    services: Sequence[str],
    nats_url: str | None,
    mongo_url: str | None,
) -> StackPlan:
    """The components to run and the services' environment; creates the SSH keys they use."""
    unknown = [name for name in services if name not in SERVICE_MODULES]
    if unknown:
        raise StackError(f"unknown services {unknown}; choose from {list(SERVICES)}")
    env = service_env(
        layout,
        ports,
        nats_url or local_nats_url(layout, ports),
        mongo_url or f"mongodb://{LOOPBACK}:{ports.mongo}",
        extra_env,
    )
    # Cloud providers named in PROVISIONER run against their simulators (clouds.py), which
    # authorize the stack's client key.
    ensure_ssh_keys(layout)
    sim_specs, cloud_env = cloud_sims(env, ports, layout.root, layout.client_public_key)
    sims = {spec.name: spec for spec in sim_specs}
    components = [
        *([NATS] if nats_url is None else []),
        *([MONGO] if mongo_url is None else []),
        SSH_HOST,
        *sims,
        *[name for name in SERVICES if name in services],
    ]
    return StackPlan(components, {**env, **cloud_env, **(extra_env or {})}, sims)


def _adopt(layout: RunLayout, components: Sequence[str], ports: Ports) -> dict[str, ProcessHandle]:
    recorded = read_env_file(layout.stack_env)
    adopted: dict[str, ProcessHandle] = {}
    for name in components:
        pid = running_pid(layout, name)
        if pid is None:
            # A stale pid file (crash, reboot, recycled pid) must not make us skip a component.
            with contextlib.suppress(FileNotFoundError):
                layout.pid_file(name).unlink()
            continue
        env_name = ports.env_name_for(name)
        wanted = ports.for_component(name)
        if env_name and recorded.get(env_name) and recorded[env_name] != str(wanted):
            raise StackError(
                f"{name} is already running (pid {pid}) on port {recorded[env_name]}, but port "
                f"{wanted} was asked for; run `./task down` first to change ports"
            )
        adopted[name] = AdoptedProcess(name, pid, layout.log_file(name))
    return adopted


def _check_ports_free(ports: Ports, components: Sequence[str]) -> None:
    busy = []
    owners: dict[int, str] = {}
    for name in components:
        port = ports.for_component(name)
        if port is not None and port in owners:
            # Two of our own components on one port (a console moved to a simulator's port).
            busy.append(
                f"port {port} is asked for both {owners[port]} ({ports.env_name_for(owners[port])})"
                f" and {name} ({ports.env_name_for(name)}); give one of them another port"
            )
        elif port is not None:
            owners[port] = name
        if port is not None and port_in_use(port):
            busy.append(
                f"port {port} for {name} is in use by a process this stack did not start; "
                f"stop that process or choose another port with {ports.env_name_for(name)}=<port>"
            )
    if busy:
        raise StackError("\n".join(busy))


class _Startup:
    """One ``start_stack`` call's progress, so a failure can stop what it started and say why."""

    def __init__(
        self, stack: Stack, sims: Mapping[str, SimSpec], timeout_seconds: float, report: Report
    ) -> None:
        self.stack = stack
        self.sims = sims
        self.timeout_seconds = timeout_seconds
        self.report = report
        self.started: list[str] = []
        # The component being started or waited for, whose log explains a timeout or early exit.
        self.current: str | None = None

    def start_in_order(
        self, components: Sequence[str], adopted: Mapping[str, ProcessHandle]
    ) -> None:
        """Servers (nats-server, the database, the SSH host, simulators) start together and are
        waited for together; the services start once those listen (they retry their start-up
        steps anyway, but would log every refused first attempt)."""
        servers = [name for name in components if name not in SERVICE_MODULES]
        services = [name for name in components if name in SERVICE_MODULES]
        for group in (servers, services):
            waits: list[tuple[str, ManagedProcess, int]] = []
            for name in group:
                if name in adopted:
                    self.stack.processes[name] = adopted[name]
                    self.report(f"{name}: already running (pid {adopted[name].pid})")
                    continue
                self.current = name
                process, port = spawn_component(
                    name, self.stack.layout, self.stack.ports, self.stack.env, self.sims
                )
                self._started_one(name, process)
                if port is not None:
                    waits.append((name, process, port))
            deadline = time.monotonic() + self.timeout_seconds
            for name, process, port in waits:
                self.current = name
                wait_listening(process, port, max(0.0, deadline - time.monotonic()))
                self.report(f"{name}: listening on port {port}")

    def _started_one(self, name: str, handle: ProcessHandle) -> None:
        layout = self.stack.layout
        self.stack.processes[name] = handle
        self.started.append(name)
        atomic_write(layout.pid_file(name), f"{handle.pid}\n")
        self.report(f"{name}: started (pid {handle.pid}, log {layout.log_file(name)})")

    def wait_until_up(self) -> None:
        """The console answers /healthz, then every process survives until the services it
        started answer /readyz, SETTLE_SECONDS at most."""
        if "console" in self.stack.processes:
            self.current = "console"
            wait_console_healthy(
                self.stack.processes["console"],
                f"{self.stack.console_url}/healthz",
                self.stack.log_path("console"),
                self.timeout_seconds,
            )
        if self.started:
            started = [name for name in self.started if name in SERVICE_MODULES]
            probes = {
                name: (self.stack.processes[name], self.stack.health_url(name)) for name in started
            }
            settle(probes, SETTLE_SECONDS)
        dead = self.stack.dead_components()
        if dead:
            self.current = None  # the message below names every dead component already
            raise StackError(
                "\n".join(
                    f"{name} exited right after starting; last lines of "
                    f"{self.stack.log_path(name)}:\n{indent(log_tail(self.stack.log_path(name)))}"
                    for name in dead
                )
            )

    def roll_back(self, error: BaseException) -> StackError | None:
        """Stop what this call started; the StackError to raise instead of ``error``, if any."""
        processes, layout = self.stack.processes, self.stack.layout
        # Note other casualties before stopping everything, or their early exit goes unseen.
        also_dead = [
            name
            for name in self.started
            if self.current is not None and name != self.current and not processes[name].alive()
        ]
        for name in reversed(self.started):
            processes[name].stop(DEFAULT_STOP_TIMEOUT)
            with contextlib.suppress(FileNotFoundError):
                layout.pid_file(name).unlink()
        others = "".join(
            f"\n{name} had exited as well; see {layout.log_file(name)}" for name in also_dead
        )
        if isinstance(error, StackError):
            return StackError(f"{error}{others}")
        if isinstance(error, (TimeoutError, RuntimeError, OSError)):
            current = self.current
            detail = (
                f"\nlast lines of {layout.log_file(current)}:\n"
                f"{indent(log_tail(layout.log_file(current)))}"
                if current
                else ""
            )
            return StackError(f"{error}{detail}{others}")
        return None
