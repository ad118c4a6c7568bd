"""Where a local stack keeps its state and how it is configured: ports, the run dir, stack.env."""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from neobatch.sim.testing.servers import free_port

# The local stack's two keys (loopback only): a project key of project `default`, and an
# operator key (models, templates) the console seeds from NEOBATCH_OPERATOR_API_KEY.
DEV_API_KEY = "nb-dev-local-key"
DEV_OPERATOR_KEY = "nb-dev-local-operator-key"


class StackError(RuntimeError):
    """The stack could not be started or inspected; the message says why and what to do."""


@dataclass(frozen=True)
class Ports:
    nats: int = 4222
    mongo: int = 27017
    ssh: int = 2222
    console: int = 8080
    # The cloud simulators (`clouds.py`), started when PROVISIONER names their cloud, and the
    # SSH port of the Lambda simulator's machines.
    runpod_sim: int = 8180
    lambda_sim: int = 8181
    lambda_ssh: int = 2200

    ENV_NAMES = {
        "nats": "NEOBATCH_NATS_PORT",
        "mongo": "NEOBATCH_MONGO_PORT",
        "ssh": "NEOBATCH_SSH_PORT",
        "console": "NEOBATCH_CONSOLE_PORT",
        "runpod_sim": "NEOBATCH_RUNPOD_SIM_PORT",
        "lambda_sim": "NEOBATCH_LAMBDA_SIM_PORT",
        "lambda_ssh": "NEOBATCH_LAMBDA_SSH_PORT",
    }
    # The component that listens on each port (the names of components.py and clouds.py).
    COMPONENTS = {
        "nats": "nats",
        "mongo": "mongo",
        "ssh": "ssh-host",
        "console": "console",
        "runpod_sim": "runpod-sim",
        "lambda_sim": "lambda-sim",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Ports:
        """Fixed defaults, each overridable by ``NEOBATCH_<NAME>_PORT``."""
        return cls().overridden(environ)

    def overridden(self, environ: Mapping[str, str]) -> Ports:
        """These ports, with those that ``environ`` names (``NEOBATCH_<NAME>_PORT``) replaced."""
        values: dict[str, int] = {}
        for attr, env_name in self.ENV_NAMES.items():
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
        return replace(self, **values)

    @classmethod
    def free(cls) -> Ports:
        """Distinct ports that are free right now (for tests running stacks side by side)."""
        chosen: list[int] = []
        while len(chosen) < len(cls.ENV_NAMES):
            port = free_port()
            if port not in chosen:
                chosen.append(port)
        return cls(*chosen)

    def _attr_for(self, component: str) -> str | None:
        return next((attr for attr, name in self.COMPONENTS.items() if name == component), None)

    def for_component(self, name: str) -> int | None:
        attr = self._attr_for(name)
        return int(getattr(self, attr)) if attr else None

    def env_name_for(self, name: str) -> str | None:
        attr = self._attr_for(name)
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
    def nats_password(self) -> Path:
        return self.root / "nats-password"

    @property
    def nats_config(self) -> Path:
        return self.root / "nats.conf"

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

    def make_dirs(self) -> None:
        """The run dir and its state: 0700 (it holds the dev key and every project's data)."""
        for directory in (self.root, self.pids, self.logs, self.nats_store, self.mongo_storage):
            private_dir(directory)


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


@contextlib.contextmanager
def stack_lock(layout: RunLayout) -> Iterator[None]:
    """Serialise up/down on one run dir; two concurrent `up`s would start everything twice."""
    private_dir(layout.root)
    with open(layout.lock_file, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    atomic_write(path, "\n".join(lines) + "\n")


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) 0700, and tighten it if it exists looser."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Write `path` whole or not at all; 0600 by default (stack.env holds the dev key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)
