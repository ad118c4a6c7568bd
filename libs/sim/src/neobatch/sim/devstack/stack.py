"""The local development stack: nats-server, SecantusDB, a loopback SSH host and the four services.

``python -m neobatch.sim.devstack up|down|status`` manages the stack behind ``./task up``; pid files,
logs and data live under ``<repo>/.run/`` (or ``$NEOBATCH_RUN_DIR``). ``start_stack`` is the
reusable part: end-to-end tests call it with free ports and a temporary run dir.

Stopping: every component runs in its own session, so SIGTERM/SIGKILL go to its whole process
group. The SSH host, like sshd, gives each SSH session its own session too, and on SIGTERM hangs
up its sessions, which ends foreground commands. Engines the runtime-agent detaches (``setsid`` /
``nohup ... &``) survive that on purpose; the runtime-agent stops its engines itself. As a safety
net for a crashed agent, every process the stack starts carries ``NEOBATCH_STACK_DIR=<run dir>``
in its environment (the SSH host passes its environment on to the commands it runs), and stopping
the stack terminates any process of this user that still carries it. That sweep reads ``/proc``,
so it only works on Linux.

No pytest imports here: the CLI and the tests share this module.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import os
import shlex
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from neobatch.sim.devstack_clouds import SIM_MODULES, SimSpec, cloud_sims
from neobatch.sim.servers import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    start_mongo,
    start_nats,
    start_python_module,
    wait_port,
)

DEV_API_KEY = "nb-dev-local-key"
STACK_MARKER_ENV = "NEOBATCH_STACK_DIR"
SUPPORTED_PROVISIONERS = ("ssh", "runpod", "lambdaCloud")

NATS = "nats"
MONGO = "mongo"
SSH_HOST = "ssh-host"
SSH_HOST_MODULE = "neobatch.sim.ssh_host"
SERVICE_MODULES: dict[str, str] = {
    "console": "neobatch.console",
    "planner": "neobatch.planner",
    "resource-manager": "neobatch.resource_manager",
    "runtime-agent": "neobatch.runtime_agent",
}
SERVICES: tuple[str, ...] = tuple(SERVICE_MODULES)
# Start order; stopping goes the other way so services never outlive their dependencies.
ALL_COMPONENTS: tuple[str, ...] = (NATS, MONGO, SSH_HOST, *SIM_MODULES, *SERVICES)

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 10.0
# How long every process must survive after the console is healthy. Services that cannot reach
# NATS or MongoDB, or fail on bad settings, usually die within this window.
SETTLE_SECONDS = 1.5
LOG_TAIL_LINES = 40


class StackError(RuntimeError):
    """The stack could not be started or inspected; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Ports:
    nats: int = 4222
    mongo: int = 27017
    ssh: int = 2222
    console: int = 8080

    ENV_NAMES = {
        "nats": "NEOBATCH_NATS_PORT",
        "mongo": "NEOBATCH_MONGO_PORT",
        "ssh": "NEOBATCH_SSH_PORT",
        "console": "NEOBATCH_CONSOLE_PORT",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Ports:
        """Fixed defaults, each overridable by ``NEOBATCH_<NAME>_PORT``."""
        values: dict[str, int] = {}
        for attr, env_name in cls.ENV_NAMES.items():
            raw = environ.get(env_name, "").strip()
            if not raw:
                continue
            try:
                port = int(raw)
            except ValueError:
                raise StackError(f"{env_name}={raw!r} is not a port number") from None
            if not 0 < port < 65536:
                raise StackError(f"{env_name}={port} is outside 1..65535")
            values[attr] = port
        return cls(**values)

    @classmethod
    def free(cls) -> Ports:
        """Four distinct ports that are free right now (for tests running stacks side by side)."""
        chosen: list[int] = []
        while len(chosen) < 4:
            port = free_port()
            if port not in chosen:
                chosen.append(port)
        return cls(*chosen)

    def for_component(self, name: str) -> int | None:
        return {
            NATS: self.nats,
            MONGO: self.mongo,
            SSH_HOST: self.ssh,
            "console": self.console,
        }.get(name)

    def env_name_for(self, name: str) -> str | None:
        attr = {NATS: "nats", MONGO: "mongo", SSH_HOST: "ssh", "console": "console"}.get(name)
        return self.ENV_NAMES[attr] if attr else None


@dataclass(frozen=True)
class RunLayout:
    """Where a stack keeps its state; everything sits under one directory."""

    root: Path

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def nats_store(self) -> Path:
        return self.root / "nats"

    @property
    def mongo_storage(self) -> Path:
        return self.root / "mongo"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def client_public_key(self) -> Path:
        return self.ssh_dir / "id_ed25519.pub"

    @property
    def host_key(self) -> Path:
        return self.ssh_dir / "host_key"

    @property
    def stack_env(self) -> Path:
        return self.root / "stack.env"

    @property
    def lock_file(self) -> Path:
        return self.root / "devstack.lock"

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def find_run_dir(cwd: Path | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """``$NEOBATCH_RUN_DIR``, else ``.run`` in the nearest directory above cwd with a Taskfile.yml."""
    override = environ.get("NEOBATCH_RUN_DIR", "").strip()
    if override:
        return Path(override).expanduser().resolve()
    start = (cwd or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        if (directory / "Taskfile.yml").is_file():
            return directory / ".run"
    raise StackError(
        f"no Taskfile.yml in {start} or above, so the repository root is unknown; "
        "run from inside the repository or set NEOBATCH_RUN_DIR"
    )


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # Containers can run as a uid with no passwd entry; the loopback SSH host takes any name.
        return "neobatch"


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the ``KEY=value`` lines written by ``write_env_file`` (shell-quoted values)."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        parts = shlex.split(raw) if raw else [""]
        values[key.strip()] = parts[0] if parts else ""
    return values


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    lines = ["# Written by neobatch.sim.devstack; removed by `down`. Shell-sourceable."]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    _atomic_write(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# Processes known only by pid (started by an earlier `up`)


class ProcessHandle(Protocol):
    @property
    def pid(self) -> int: ...

    def alive(self) -> bool: ...

    def stop(self, timeout_seconds: float = ...) -> int | None: ...


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A dead process whose parent has not reaped it yet still answers kill(0); it is not running.
    return _proc_state(pid) not in ("Z", "X")


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in field 2 may contain spaces and parentheses; the state follows the last ')'.
    return stat.rpartition(")")[2].split()[0]


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _looks_like(name: str, pid: int) -> bool:
    """Whether pid still runs the component's program, so a recycled pid is never signalled."""
    argv = _proc_cmdline(pid)
    if argv is None:
        # No /proc (e.g. macOS): nothing better to go on than the pid itself.
        return True
    if name == NATS:
        return bool(argv) and Path(argv[0]).name == "nats-server"
    if name == MONGO:
        return "secantus" in argv
    module = SSH_HOST_MODULE if name == SSH_HOST else SERVICE_MODULES.get(name)
    module = module or SIM_MODULES.get(name)
    return module is not None and module in argv


def _signal_group_or_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # Components lead their own session, so their group id is their pid; anything else
        # (an adopted process that is not a group leader) gets the signal alone.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _wait_gone(pid: int, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(pid: int, timeout_seconds: float = DEFAULT_STOP_TIMEOUT) -> None:
    """SIGTERM the process group led by pid, SIGKILL it if it has not exited in time."""
    if not pid_alive(pid):
        return
    pgid_is_pid = False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        pgid_is_pid = os.getpgid(pid) == pid
    _signal_group_or_pid(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout_seconds):
        _signal_group_or_pid(pid, signal.SIGKILL)
        _wait_gone(pid, timeout_seconds)
    if pgid_is_pid:
        # The leader is gone but children it forked may linger in its group; finish them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


class AdoptedProcess:
    """A component started by an earlier ``up``, known only from its pid file."""

    def __init__(self, name: str, pid: int, log_path: Path) -> None:
        self.name = name
        self._pid = pid
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self._pid

    def alive(self) -> bool:
        return pid_alive(self._pid)

    def stop(self, timeout_seconds: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        stop_pid(self._pid, timeout_seconds)
        return None

    def __repr__(self) -> str:
        return f"AdoptedProcess(name={self.name!r}, pid={self._pid})"


def read_pid(layout: RunLayout, name: str) -> int | None:
    try:
        return int(layout.pid_file(name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_pid(layout: RunLayout, name: str) -> int | None:
    """The pid from the component's pid file if that process is alive and still the component."""
    pid = read_pid(layout, name)
    if pid is None or not pid_alive(pid) or not _looks_like(name, pid):
        return None
    return pid


def marked_pids(run_dir: Path) -> list[int]:
    """Pids of this user's processes whose environment carries this stack's marker."""
    marker = f"{STACK_MARKER_ENV}={run_dir}".encode()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            # Other users' processes and ones that just exited are unreadable; none are ours.
            continue
        if marker in environ.split(b"\0") and pid_alive(pid):
            found.append(pid)
    return found


def sweep_marked(run_dir: Path, timeout_seconds: float = 3.0) -> list[int]:
    """Terminate leftovers of this stack (e.g. engines detached from a dead agent)."""
    pids = marked_pids(run_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_seconds
    for pid in pids:
        if not _wait_gone(pid, max(0.0, deadline - time.monotonic())):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return pids


# --------------------------------------------------------------------------------------------
# Helpers


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether something listens on host:port (or holds it so that we could not listen)."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so a recently closed connection in TIME_WAIT does not count as busy,
        # while a listener (also one bound to 0.0.0.0) still makes bind fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 64 * 1024))
            data = log.read()
    except OSError:
        return f"(no log at {path})"
    text = data.decode(errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else f"(log {path} is empty)"


# Loopback requests must never go through an HTTP proxy configured in the user's environment.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout_seconds: float = 2.0) -> int | None:
    """Status code of a GET, or None if nothing answered."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout_seconds) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def ensure_ssh_keys(layout: RunLayout) -> None:
    """Create the client key pair and the SSH host key once; tighten modes the agent checks."""
    # Imported here because only `up` needs asyncssh, which is slow to import; `status` stays quick.
    import asyncssh

    from neobatch.sim.ssh_host import write_private_key

    layout.ssh_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.ssh_dir, 0o700)
    for private, public in (
        (layout.client_key, layout.client_public_key),
        (layout.host_key, layout.host_key.with_name(layout.host_key.name + ".pub")),
    ):
        if not private.exists() or not public.exists():
            # Writes the key created 0600 and its OpenSSH public line next to it as <key>.pub.
            write_private_key(asyncssh.generate_private_key("ssh-ed25519"), private)
        # The runtime-agent refuses a key file others can read; fix keys copied or restored loosely.
        if private.stat().st_mode & 0o077:
            os.chmod(private, 0o600)


@contextlib.contextmanager
def stack_lock(layout: RunLayout) -> Iterator[None]:
    """Serialise up/down on one run dir; two concurrent `up`s would start everything twice."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_file, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _silent(_message: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# The stack


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
    def nats_url(self) -> str:
        return self.env["NATS_URL"]

    @property
    def mongo_url(self) -> str:
        return self.env["MONGO_URL"]

    def log_path(self, name: str) -> Path:
        return self.layout.log_file(name)

    def dead_components(self) -> list[str]:
        return [name for name, handle in self.processes.items() if not handle.alive()]

    def stop(
        self,
        timeout_seconds: float = DEFAULT_STOP_TIMEOUT,
        report: Callable[[str], None] = _silent,
    ) -> None:
        for name in reversed(list(self.processes)):
            handle = self.processes[name]
            was_alive = handle.alive()
            handle.stop(timeout_seconds)
            if was_alive:
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
        _wait_gone(handle.pid, DEFAULT_STOP_TIMEOUT)
        handle.stop(DEFAULT_STOP_TIMEOUT)  # reaps it and anything left in its group

    def restart(self, name: str, timeout_seconds: float = DEFAULT_START_TIMEOUT) -> None:
        """Start one component again (after `kill` or a stop) with the stack's settings."""
        old = self.processes.get(name)
        if old is not None and old.alive():
            old.stop(DEFAULT_STOP_TIMEOUT)
        handle = _start_component(name, self.layout, self.ports, self.env, timeout_seconds)
        self.processes[name] = handle
        _atomic_write(self.layout.pid_file(name), f"{handle.pid}\n")

    def env_file_values(self) -> dict[str, str]:
        return {
            "NEOBATCH_CONSOLE_URL": self.console_url,
            "NEOBATCH_API_KEY": self.api_key,
            "NATS_URL": self.nats_url,
            "MONGO_URL": self.mongo_url,
            "NEOBATCH_SSH_POOL": self.env.get("NEOBATCH_SSH_POOL", ""),
            "NEOBATCH_SSH_KEY_FILE": self.env.get("NEOBATCH_SSH_KEY_FILE", ""),
            Ports.ENV_NAMES["nats"]: str(self.ports.nats),
            Ports.ENV_NAMES["mongo"]: str(self.ports.mongo),
            Ports.ENV_NAMES["ssh"]: str(self.ports.ssh),
            Ports.ENV_NAMES["console"]: str(self.ports.console),
        }

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def service_env(
    layout: RunLayout,
    ports: Ports,
    nats_url: str,
    mongo_url: str,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment every service gets (see CONTRACTS.md); ``extra_env`` wins."""
    env = {
        "NATS_URL": nats_url,
        "MONGO_URL": mongo_url,
        "NEOBATCH_CONSOLE_HOST": LOOPBACK,
        "NEOBATCH_CONSOLE_PORT": str(ports.console),
        "NEOBATCH_API_KEY": DEV_API_KEY,
        "PROVISIONER": "ssh",
        "NEOBATCH_SSH_POOL": f"{current_user()}@{LOOPBACK}:{ports.ssh}",
        "NEOBATCH_SSH_KEY_FILE": str(layout.client_key),
        # Log lines reach .run/logs as they happen, not when a buffer fills or the process exits.
        "PYTHONUNBUFFERED": "1",
        STACK_MARKER_ENV: str(layout.root),
        # /healthz, /readyz and /metrics of the services without an HTTP API (ServiceRuntime).
        **{health_port_var(name): str(free_port()) for name in HEALTH_SERVICES},
    }
    if extra_env:
        env.update(extra_env)
    return env


HEALTH_SERVICES = ("planner", "resource-manager", "runtime-agent")


def health_port_var(name: str) -> str:
    """The stack env entry holding a service's health port; it gets it as NEOBATCH_HEALTH_PORT."""
    return f"NEOBATCH_{name.upper().replace('-', '_')}_HEALTH_PORT"


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
    report: Callable[[str], None] = _silent,
) -> Stack:
    """Start the stack into ``run_dir`` and return its handles.

    ``services`` selects which of the four services to run (in the fixed order); pass ``()`` for
    the infrastructure alone. Given ``nats_url``/``mongo_url``, those servers are used instead of
    starting our own. With ``adopt_running`` (the CLI), components whose pid file names a live
    process are kept rather than started again. On any failure everything this call started is
    stopped again and StackError carries the reason and the failing component's log tail.
    """
    layout = RunLayout(Path(run_dir).resolve())
    for directory in (layout.root, layout.pids, layout.logs):
        directory.mkdir(parents=True, exist_ok=True)
    unknown = [name for name in services if name not in SERVICE_MODULES]
    if unknown:
        raise StackError(f"unknown services {unknown}; choose from {list(SERVICES)}")

    components = [
        *([NATS] if nats_url is None else []),
        *([MONGO] if mongo_url is None else []),
        SSH_HOST,
        *[name for name in SERVICES if name in services],
    ]
    nats_url = nats_url or f"nats://{LOOPBACK}:{ports.nats}"
    mongo_url = mongo_url or f"mongodb://{LOOPBACK}:{ports.mongo}"
    env = service_env(layout, ports, nats_url, mongo_url, extra_env)
    # Cloud providers named in PROVISIONER run against their simulators (devstack_clouds).
    ensure_ssh_keys(layout)
    sim_specs, cloud_env = cloud_sims(env, layout.root, layout.client_public_key)
    env = {**env, **cloud_env, **(extra_env or {})}
    sims = {spec.name: spec for spec in sim_specs}
    after_ssh = components.index(SSH_HOST) + 1
    components[after_ssh:after_ssh] = list(sims)
    stack = Stack(run_dir=layout.root, ports=ports, env=env)

    adopted = _adopt(layout, components, ports) if adopt_running else {}
    _check_ports_free(ports, [name for name in components if name not in adopted])
    ensure_ssh_keys(layout)

    started: list[str] = []
    # The component being started or waited for, whose log explains a timeout or early exit.
    current: str | None = None
    try:
        for name in components:
            if name in adopted:
                stack.processes[name] = adopted[name]
                report(f"{name}: already running (pid {adopted[name].pid})")
                continue
            current = name
            handle = _start_component(name, layout, ports, env, timeout_seconds, sims)
            stack.processes[name] = handle
            started.append(name)
            _atomic_write(layout.pid_file(name), f"{handle.pid}\n")
            report(f"{name}: started (pid {handle.pid}, log {layout.log_file(name)})")
        if "console" in stack.processes:
            current = "console"
            _wait_console_healthy(stack, timeout_seconds)
        if started:
            time.sleep(SETTLE_SECONDS)
        dead = stack.dead_components()
        if dead:
            current = None  # the message below names every dead component already
            raise StackError(
                "\n".join(
                    f"{name} exited right after starting; last lines of {layout.log_file(name)}:\n"
                    f"{_indent(log_tail(layout.log_file(name)))}"
                    for name in dead
                )
            )
    except BaseException as error:
        # Note other casualties before stopping everything, or their early exit goes unseen.
        also_dead = [
            name
            for name in started
            if current is not None and name != current and not stack.processes[name].alive()
        ]
        for name in reversed(started):
            stack.processes[name].stop(DEFAULT_STOP_TIMEOUT)
            with contextlib.suppress(FileNotFoundError):
                layout.pid_file(name).unlink()
        others = "".join(
            f"\n{name} had exited as well; see {layout.log_file(name)}" for name in also_dead
        )
        if isinstance(error, StackError):
            raise StackError(f"{error}{others}") from error
        if isinstance(error, (TimeoutError, RuntimeError, OSError)):
            detail = (
                f"\nlast lines of {layout.log_file(current)}:\n"
                f"{_indent(log_tail(layout.log_file(current)))}"
                if current
                else ""
            )
            raise StackError(f"{error}{detail}{others}") from error
        raise
    write_env_file(layout.stack_env, stack.env_file_values())
    return stack


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
    for name in components:
        port = ports.for_component(name)
        if port is not None and port_in_use(port):
            busy.append(
                f"port {port} for {name} is in use by a process this stack did not start; "
                f"stop that process or choose another port with {ports.env_name_for(name)}=<port>"
            )
    if busy:
        raise StackError("\n".join(busy))


def _start_component(
    name: str,
    layout: RunLayout,
    ports: Ports,
    env: Mapping[str, str],
    timeout_seconds: float,
    sims: Mapping[str, SimSpec] | None = None,
) -> ManagedProcess:
    log_path = layout.log_file(name)
    if sims and name in sims:
        spec = sims[name]
        # Like the SSH host: the marker (engines on its machines inherit it), never service secrets.
        sim_env = {STACK_MARKER_ENV: env[STACK_MARKER_ENV], "PYTHONUNBUFFERED": "1", **spec.env}
        process = start_python_module(spec.module, spec.args, env=sim_env, log_path=log_path)
        try:
            wait_port(LOOPBACK, spec.port, timeout_seconds, process=process)
        except BaseException:
            process.stop()
            raise
        return process
    if name == NATS:
        return start_nats(ports.nats, layout.nats_store, log_path, timeout_seconds)
    if name == MONGO:
        # A directory, not :memory:, so models, templates and jobs survive `down`/`up`.
        return start_mongo(ports.mongo, layout.mongo_storage, log_path, timeout_seconds)
    if name == SSH_HOST:
        args = [
            "--host",
            LOOPBACK,
            "--port",
            str(ports.ssh),
            "--authorized-keys",
            str(layout.client_public_key),
            "--host-key",
            str(layout.host_key),
        ]
        # Only the marker, not the service settings: commands run through this host (engines)
        # inherit its environment and must not see the API key or database URLs.
        ssh_env = {STACK_MARKER_ENV: env[STACK_MARKER_ENV], "PYTHONUNBUFFERED": "1"}
        process = start_python_module(SSH_HOST_MODULE, args, env=ssh_env, log_path=log_path)
        try:
            wait_port(LOOPBACK, ports.ssh, timeout_seconds, process=process)
        except BaseException:
            process.stop()
            raise
        return process
    if health_port_var(name) in env:
        env = {**env, "NEOBATCH_HEALTH_PORT": env[health_port_var(name)]}
    return start_python_module(SERVICE_MODULES[name], (), env=env, log_path=log_path)


def _wait_console_healthy(stack: Stack, timeout_seconds: float) -> None:
    handle = stack.processes["console"]
    log_path = stack.log_path("console")
    url = f"{stack.console_url}/healthz"
    deadline = time.monotonic() + timeout_seconds
    last: int | None = None
    while True:
        if not handle.alive():
            raise StackError(
                f"console exited before {url} answered; last lines of {log_path}:\n"
                f"{_indent(log_tail(log_path))}"
            )
        last = http_status(url)
        if last == 200:
            return
        if time.monotonic() >= deadline:
            answer = "no answer" if last is None else f"last answer HTTP {last}"
            raise StackError(
                f"console not healthy: GET {url} did not return 200 within {timeout_seconds:g}s "
                f"({answer}); last lines of {log_path}:\n{_indent(log_tail(log_path))}"
            )
        time.sleep(0.2)


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


# --------------------------------------------------------------------------------------------
# Status


@dataclass(frozen=True)
class StatusRow:
    component: str
    pid: int | None
    alive: bool
    port: int | None


def collect_status(run_dir: Path, ports: Ports | None = None) -> tuple[list[StatusRow], str]:
    """Rows for every component plus the console URL, preferring the ports of the last `up`."""
    layout = RunLayout(run_dir)
    recorded = read_env_file(layout.stack_env)
    ports = ports or Ports.from_env()
    rows = []
    for name in ALL_COMPONENTS:
        pid = read_pid(layout, name)
        alive = pid is not None and pid_alive(pid) and _looks_like(name, pid)
        env_name = ports.env_name_for(name)
        port: int | None = ports.for_component(name)
        if env_name and recorded.get(env_name, "").isdigit():
            port = int(recorded[env_name])
        rows.append(StatusRow(name, pid, alive, port))
    console_url = recorded.get("NEOBATCH_CONSOLE_URL") or f"http://{LOOPBACK}:{ports.console}"
    return rows, console_url


def format_status(rows: Sequence[StatusRow], console_url: str, api_key: str = DEV_API_KEY) -> str:
    header = ("COMPONENT", "PID", "ALIVE", "PORT")
    table = [header] + [
        (
            row.component,
            str(row.pid) if row.pid is not None else "-",
            "yes" if row.alive else "no",
            str(row.port) if row.port is not None else "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in table
    ]
    # The last two lines are for scripts: `eval "$(./task status | tail -n 2)"` or grep.
    lines.append(f"NEOBATCH_CONSOLE_URL={console_url}")
    lines.append(f"NEOBATCH_API_KEY={api_key}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI


def _cmd_up(args: argparse.Namespace) -> int:
    provisioner = os.environ.get("PROVISIONER", "").strip() or "ssh"
    unknown = [p for p in provisioner.split(",") if p.strip() not in SUPPORTED_PROVISIONERS]
    if unknown:
        print(
            f"devstack: PROVISIONER={provisioner!r} is not supported by the local stack; "
            f"choose from {', '.join(SUPPORTED_PROVISIONERS)} (or an ordered list of them)",
            file=sys.stderr,
        )
        return 2
    layout = RunLayout(find_run_dir())
    ports = Ports.from_env()
    with stack_lock(layout):
        stack = start_stack(
            layout.root,
            ports,
            {"PROVISIONER": provisioner},
            timeout_seconds=args.timeout,
            adopt_running=True,
            report=lambda message: print(f"devstack: {message}", flush=True),
        )
    print(
        f"devstack: stack is up; console {stack.console_url} (API key {stack.api_key}); "
        f"logs in {layout.logs}; stop it with ./task down",
        flush=True,
    )
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    layout = RunLayout(find_run_dir())
    if not layout.root.is_dir():
        print("devstack: nothing to stop")
        return 0
    with stack_lock(layout):
        stack = Stack(run_dir=layout.root, ports=Ports.from_env(), env={})
        for name in ALL_COMPONENTS:
            pid = running_pid(layout, name)
            if pid is not None:
                stack.processes[name] = AdoptedProcess(name, pid, layout.log_file(name))
            else:
                with contextlib.suppress(FileNotFoundError):
                    layout.pid_file(name).unlink()
        if not stack.processes:
            print("devstack: no stack components were running")
        stack.stop(args.timeout, report=lambda message: print(f"devstack: {message}", flush=True))
    return 0


def _cmd_status(_args: argparse.Namespace) -> int:
    rows, console_url = collect_status(find_run_dir())
    print(format_status(rows, console_url))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neobatch.sim.devstack", description="Run the local neobatch stack."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start every component that is not running yet")
    up.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT,
        help="seconds to wait for each server and for the console's /healthz (default %(default)s)",
    )
    up.set_defaults(func=_cmd_up)
    down = commands.add_parser("down", help="stop the stack in reverse order")
    down.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_STOP_TIMEOUT,
        help="seconds between SIGTERM and SIGKILL per component (default %(default)s)",
    )
    down.set_defaults(func=_cmd_down)
    status = commands.add_parser("status", help="show components, pids and ports")
    status.set_defaults(func=_cmd_status)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except StackError as error:
        print(f"devstack: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
