"""Runtime-agent settings, read from the environment once at start-up.

The SSH private key is checked here, before anything connects: a key file that other users
can read is refused outright (as OpenSSH refuses it), so a misconfigured deployment fails at
start with a clear message instead of leaking the key or failing on the first batch. Only
the path and the mode are ever reported, never the content.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

import msgspec

from neobatch.common.errors import ConfigError
from neobatch.common.settings import CommonSettings, env_float, env_int, env_str, read_common
from neobatch.runtime_agent.dispatch import DispatchDefaults
from neobatch.runtime_agent.tunnel import check_mode, ssh_binary

SSH_KEY_FILE_ENV = "NEOBATCH_SSH_KEY_FILE"
SSH_TUNNEL_ENV = "NEOBATCH_SSH_TUNNEL"


class AgentSettings(msgspec.Struct, frozen=True, kw_only=True):
    common: CommonSettings
    ssh_key_file: str
    # How batches are dispatched where the job's `client` block says nothing (each field of
    # it overrides one of these): concurrency, per-request timeout, retries, AIMD.
    dispatch: DispatchDefaults = DispatchDefaults()
    # Batches one agent runs at once (each on its own machine).
    max_batches: int = 8
    lease_seconds: float = 30.0
    ssh_connect_timeout_seconds: float = 15.0
    # How long to keep retrying SSH before the batch fails with `ssh_unreachable`.
    ssh_ready_timeout_seconds: float = 120.0
    engine_stop_grace_seconds: float = 15.0
    # How often an idle runner looks for claimable batches (expired leases of dead agents).
    poll_interval_seconds: float = 5.0
    # The data path to the engine (`tunnel.MODES`): `openssh` (an `ssh -N -L` subprocess with a
    # unix socket), `asyncssh` (a port-forward on the control connection), or `auto`.
    ssh_tunnel: str = "auto"


def check_key_file(path: str) -> None:
    """Refuse a missing, unreadable, non-regular or group/other-accessible key file."""
    if not path:
        raise ConfigError(f"{SSH_KEY_FILE_ENV} is required: the path of the SSH private key")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{SSH_KEY_FILE_ENV}: {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{SSH_KEY_FILE_ENV}: cannot stat {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{SSH_KEY_FILE_ENV}: {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{SSH_KEY_FILE_ENV}: {path} has mode {mode:04o}; a private key must not be "
            f"accessible to group or others (chmod 600 {path})"
        )
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{SSH_KEY_FILE_ENV}: {path} is not readable by this user")


def read_settings(env: Mapping[str, str] | None = None) -> AgentSettings:
    env = os.environ if env is None else env
    key_file = env_str(env, SSH_KEY_FILE_ENV, "")
    check_key_file(key_file)
    lease_seconds = env_float(env, "NEOBATCH_BATCH_LEASE_SECONDS", 30.0)
    if lease_seconds < 3:
        raise ConfigError(f"NEOBATCH_BATCH_LEASE_SECONDS must be >= 3, got {lease_seconds}")
    ssh_tunnel = check_mode(env_str(env, SSH_TUNNEL_ENV, "auto").lower())
    if ssh_tunnel == "openssh" and ssh_binary() is None:
        raise ConfigError(f"{SSH_TUNNEL_ENV}=openssh but the OpenSSH client (ssh) is not on PATH")
    return AgentSettings(
        common=read_common(env),
        ssh_key_file=key_file,
        dispatch=read_dispatch_defaults(env),
        max_batches=env_int(env, "NEOBATCH_MAX_BATCHES", 8, minimum=1),
        lease_seconds=lease_seconds,
        ssh_connect_timeout_seconds=env_float(env, "NEOBATCH_SSH_CONNECT_TIMEOUT_SECONDS", 15.0),
        ssh_ready_timeout_seconds=env_float(env, "NEOBATCH_SSH_READY_TIMEOUT_SECONDS", 120.0),
        engine_stop_grace_seconds=env_float(env, "NEOBATCH_ENGINE_STOP_GRACE_SECONDS", 15.0),
        poll_interval_seconds=env_float(env, "NEOBATCH_RUNNER_POLL_SECONDS", 5.0),
        ssh_tunnel=ssh_tunnel,
    )


def read_dispatch_defaults(env: Mapping[str, str]) -> DispatchDefaults:
    """The agent's dispatch defaults; unset variables keep `DispatchDefaults`' values."""
    d = DispatchDefaults()
    return DispatchDefaults(
        concurrency=env_int(env, "NEOBATCH_DISPATCH_CONCURRENCY", d.concurrency, minimum=1),
        request_timeout_seconds=env_float(
            env, "NEOBATCH_REQUEST_TIMEOUT_SECONDS", d.request_timeout_seconds
        ),
        max_retries=env_int(env, "NEOBATCH_REQUEST_MAX_RETRIES", d.max_retries, minimum=0),
        base_delay_seconds=env_float(
            env, "NEOBATCH_REQUEST_RETRY_BASE_DELAY_SECONDS", d.base_delay_seconds
        ),
        max_delay_seconds=env_float(
            env, "NEOBATCH_REQUEST_RETRY_MAX_DELAY_SECONDS", d.max_delay_seconds
        ),
        adaptive=_env_bool(env, "NEOBATCH_ADAPTIVE_CONCURRENCY", d.adaptive),
        healthy_window=env_int(
            env, "NEOBATCH_ADAPTIVE_HEALTHY_WINDOW", d.healthy_window, minimum=1
        ),
        additive_increase=env_int(
            env, "NEOBATCH_ADAPTIVE_ADDITIVE_INCREASE", d.additive_increase, minimum=1
        ),
    )


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")
