"""The stack's components, what each is given, and how one is started.

Start order is ``ALL_COMPONENTS``: nats-server, SecantusDB, the SSH host, the cloud simulators
named in ``PROVISIONER`` (``clouds.py``), then the four services. The SSH host and the
simulators get only the stack marker, never the service settings: commands they run (engines)
inherit their environment and must not see the API key or database URLs.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping

from neobatch.sim.devstack.clouds import SIM_MODULES, SimSpec
from neobatch.sim.devstack.layout import (
    DEV_API_KEY,
    DEV_OPERATOR_KEY,
    Ports,
    RunLayout,
    atomic_write,
    current_user,
    private_dir,
)
from neobatch.sim.testing.servers import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    spawn_mongo,
    spawn_nats,
    start_python_module,
    wait_listening,
)

STACK_MARKER_ENV = "NEOBATCH_STACK_DIR"
# The user the local nats-server requires (password: ensure_nats_login).
NATS_USER = "neobatch"

NATS = "nats"
MONGO = "mongo"
SSH_HOST = "ssh-host"
SSH_HOST_MODULE = "neobatch.sim.ssh_host"
SERVICE_MODULES: dict[str, str] = {
    "console": "neobatch.console",
    "planner": "neobatch.planner",
    "resource-manager": "neobatch.resource_manager",
    "runtime-agent": "neobatch.runtime_agent",
    "notifier": "neobatch.notifier",
}
SERVICES: tuple[str, ...] = tuple(SERVICE_MODULES)
# Start order; stopping goes the other way so services never outlive their dependencies.
ALL_COMPONENTS: tuple[str, ...] = (NATS, MONGO, SSH_HOST, *SIM_MODULES, *SERVICES)
# The services without an HTTP API serve /healthz, /readyz and /metrics on a port of their own.
HEALTH_SERVICES = ("planner", "resource-manager", "runtime-agent", "notifier")


def health_port_var(name: str) -> str:
    """The stack env entry holding a service's health port; it gets it as NEOBATCH_HEALTH_PORT."""
    return f"NEOBATCH_{name.upper().replace('-', '_')}_HEALTH_PORT"


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
        "NEOBATCH_OPERATOR_API_KEY": DEV_OPERATOR_KEY,
        "PROVISIONER": "ssh",
        # The rate limit counts every request (reads too); tests and demos poll one job many
        # times a second with the one dev key, so the local stack allows far more.
        "NEOBATCH_RATE_LIMIT_PER_MINUTE": "60000",
        "NEOBATCH_SSH_POOL": f"{current_user()}@{LOOPBACK}:{ports.ssh}",
        "NEOBATCH_SSH_KEY_FILE": str(layout.client_key),
        # Webhooks to receivers on this machine (tests, demos): plain http to loopback only.
        "NEOBATCH_WEBHOOK_ALLOW_HTTP": "true",
        "NEOBATCH_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
        # Log lines reach .run/logs as they happen, not when a buffer fills or the process exits.
        "PYTHONUNBUFFERED": "1",
        STACK_MARKER_ENV: str(layout.root),
        # /healthz, /readyz and /metrics of the services without an HTTP API (ServiceRuntime).
        **{health_port_var(name): str(free_port()) for name in HEALTH_SERVICES},
    }
    if extra_env:
        env.update(extra_env)
    return env


def ensure_ssh_keys(layout: RunLayout) -> None:
    """Create the client key pair and the SSH host key once; tighten modes the agent checks."""
    # Imported here because only `up` needs asyncssh, which is slow to import; `status` stays quick.
    import asyncssh

    from neobatch.sim.ssh_host.keys import write_private_key

    private_dir(layout.ssh_dir)
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


def ensure_nats_login(layout: RunLayout) -> str:
    """The local nats-server's password, made once per run dir; returns it.

    It is kept 0600 in the run dir and reaches nats-server through a 0600 config file (never
    its command line, which `ps` shows every local user); the services get it in NATS_URL.
    """
    if not layout.nats_password.exists():
        atomic_write(layout.nats_password, secrets.token_hex(24) + "\n")
    password = layout.nats_password.read_text(encoding="utf-8").strip()
    login = f'authorization {{\n  user: "{NATS_USER}"\n  password: "{password}"\n}}\n'
    atomic_write(layout.nats_config, login)
    return password


def local_nats_url(layout: RunLayout, ports: Ports) -> str:
    return f"nats://{NATS_USER}:{ensure_nats_login(layout)}@{LOOPBACK}:{ports.nats}"


def start_component(
    name: str,
    layout: RunLayout,
    ports: Ports,
    env: Mapping[str, str],
    timeout_seconds: float,
    sims: Mapping[str, SimSpec] | None = None,
) -> ManagedProcess:
    """Start one component with its log under the run dir; servers are listening on return."""
    process, port = spawn_component(name, layout, ports, env, sims)
    return process if port is None else wait_listening(process, port, timeout_seconds)


def spawn_component(
    name: str,
    layout: RunLayout,
    ports: Ports,
    env: Mapping[str, str],
    sims: Mapping[str, SimSpec] | None = None,
) -> tuple[ManagedProcess, int | None]:
    """Start one component without waiting; returns it and the port it will listen on (None for
    a service: the console's /healthz says when it is up). Wait with ``wait_listening``."""
    log_path = layout.log_file(name)
    if sims and name in sims:
        spec = sims[name]
        env = {**_marker_env(env), **spec.env}
        return start_python_module(spec.module, spec.args, env=env, log_path=log_path), spec.port
    if name == NATS:
        ensure_nats_login(layout)
        return spawn_nats(ports.nats, layout.nats_store, log_path, layout.nats_config), ports.nats
    if name == MONGO:
        # A directory, not :memory:, so models, templates and jobs survive `down`/`up`.
        return spawn_mongo(ports.mongo, layout.mongo_storage, log_path), ports.mongo
    if name == SSH_HOST:
        return _spawn_ssh_host(layout, ports, env), ports.ssh
    return _start_service(name, env, log_path), None


def _marker_env(env: Mapping[str, str]) -> dict[str, str]:
    """The stack marker alone (engines started through this process inherit it), unbuffered."""
    return {STACK_MARKER_ENV: env[STACK_MARKER_ENV], "PYTHONUNBUFFERED": "1"}


def _spawn_ssh_host(layout: RunLayout, ports: Ports, env: Mapping[str, str]) -> ManagedProcess:
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
    return start_python_module(
        SSH_HOST_MODULE, args, env=_marker_env(env), log_path=layout.log_file(SSH_HOST)
    )


def _start_service(name: str, env: Mapping[str, str], log_path: os.PathLike[str]) -> ManagedProcess:
    if health_port_var(name) in env:
        env = {**env, "NEOBATCH_HEALTH_PORT": env[health_port_var(name)]}
    return start_python_module(SERVICE_MODULES[name], (), env=env, log_path=log_path)
