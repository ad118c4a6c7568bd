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
from typing import Annotated

from neobatch.common.errors import ConfigError
from neobatch.common.settings import CommonSettings, Env, EnvFields, Settings, read_env
from neobatch.runtime_agent.dispatch.policy import MAX_RESPONSE_BYTES_LIMIT, DispatchDefaults
from neobatch.runtime_agent.machine.tunnel import MODES, ssh_binary
from neobatch.runtime_agent.results.writer import MAX_PENDING_BYTES

SSH_KEY_FILE_ENV = "NEOBATCH_SSH_KEY_FILE"
SSH_TUNNEL_ENV = "NEOBATCH_SSH_TUNNEL"


def check_key_file(path: str) -> None:
    """Refuse a missing, unreadable, non-regular or group/other-accessible key file."""
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


def check_response_cap(value: int) -> None:
    if value > MAX_RESPONSE_BYTES_LIMIT:
        raise ConfigError(
            f"NEOBATCH_MAX_RESPONSE_BYTES: {value} is over {MAX_RESPONSE_BYTES_LIMIT} (one "
            "response is stored whole in one MongoDB document, at most 16 MiB)"
        )


def require_openssh_client(mode: str) -> None:
    if mode == "openssh" and ssh_binary() is None:
        raise ConfigError(f"{SSH_TUNNEL_ENV}=openssh but the OpenSSH client (ssh) is not on PATH")


class AgentSettings(Settings, frozen=True, kw_only=True):
    common: CommonSettings
    ssh_key_file: Annotated[
        str,
        Env(
            SSH_KEY_FILE_ENV,
            "Path of the SSH private key for the machines; refused unless mode 0600 or stricter",
            check=check_key_file,
        ),
    ]
    # How batches are dispatched where the job's `client` block says nothing (each field of
    # it overrides one of these): concurrency, per-request timeout, retries, AIMD.
    dispatch: Annotated[
        DispatchDefaults,
        EnvFields(
            concurrency=Env(
                "NEOBATCH_DISPATCH_CONCURRENCY",
                "Most requests in flight per batch on an engine without load metrics (AIMD or "
                "fixed); a vLLM reporting its load gets 2 x its `--max-num-seqs` (1024 when "
                "the launch does not set it); a job's `client.max_concurrency` wins",
                minimum=1,
            ),
            engine_metrics=Env(
                "NEOBATCH_DISPATCH_ENGINE_METRICS",
                "Read the engine's Prometheus `/metrics` (vLLM's running/waiting/KV-cache "
                "gauges) and keep a small queue at the engine instead of AIMD; `false` = AIMD "
                "(or fixed) always. Engines without those gauges get AIMD either way",
            ),
            request_timeout_seconds=Env(
                "NEOBATCH_REQUEST_TIMEOUT_SECONDS",
                "Timeout of one engine request attempt (the job's "
                "`client.request_timeout_seconds`, else the template's "
                "`engine.request_timeout_seconds`, wins)",
            ),
            max_retries=Env(
                "NEOBATCH_REQUEST_MAX_RETRIES",
                "Retries of a request on 408/429/5xx or transport errors (a job's "
                "`client.retry_policy` wins)",
                minimum=0,
            ),
            base_delay_seconds=Env(
                "NEOBATCH_REQUEST_RETRY_BASE_DELAY_SECONDS",
                "First retry delay; doubles per retry, with jitter; a 429/503 `Retry-After` "
                "wins (capped at max(max delay, 60 s))",
            ),
            max_delay_seconds=Env(
                "NEOBATCH_REQUEST_RETRY_MAX_DELAY_SECONDS", "Longest backoff between retries"
            ),
            adaptive=Env(
                "NEOBATCH_ADAPTIVE_CONCURRENCY",
                "Adaptive concurrency: steered by the engine's queue when it reports its load "
                "(see NEOBATCH_DISPATCH_ENGINE_METRICS), else AIMD (start at 8, grow while "
                "latency holds, back off on 408/429/503/504, timeouts and latency spikes); "
                "`false` = fixed at the maximum",
            ),
            healthy_window=Env(
                "NEOBATCH_ADAPTIVE_HEALTHY_WINDOW",
                "Successes between two increases of the adaptive limit",
                minimum=1,
            ),
            additive_increase=Env(
                "NEOBATCH_ADAPTIVE_ADDITIVE_INCREASE",
                "Step of an increase (25% of the limit while still probing, before the "
                "first back-off)",
                minimum=1,
            ),
            max_response_bytes=Env(
                "NEOBATCH_MAX_RESPONSE_BYTES",
                "Largest engine response body kept, in bytes (at most 15 MiB); a larger answer "
                "is cut off and becomes that line's error `response_too_large`, not retried (a "
                "job's `client.max_response_bytes` may only lower it)",
                minimum=1024,
                check=check_response_cap,
            ),
            cancel_grace_seconds=Env(
                "NEOBATCH_CANCEL_GRACE_SECONDS",
                "After a batch is cancelled or expires, how long requests already sent may "
                "still answer (their results are kept); then they are abandoned, the engine "
                "stops generating them, and their lines end `batch_cancelled`/`batch_expired`",
                minimum=0,
                maximum=600,
            ),
        ),
    ] = DispatchDefaults()
    checkpoint_max_pending_bytes: Annotated[
        int,
        Env(
            "NEOBATCH_CHECKPOINT_MAX_PENDING_BYTES",
            "Bytes of answers one batch holds awaiting their checkpoint before dispatch pauses "
            "(besides the count bound, its concurrency)",
            minimum=1024 * 1024,
        ),
    ] = MAX_PENDING_BYTES
    prefix_order: Annotated[
        bool,
        Env(
            "NEOBATCH_DISPATCH_PREFIX_ORDER",
            "Send requests that share a prompt prefix (system prompt, few-shot block) together "
            "so the engine's prefix cache hits; `false` = input order. Output files are in "
            "input order either way",
        ),
    ] = True
    # Each batch on its own machine.
    max_batches: Annotated[
        int, Env("NEOBATCH_MAX_BATCHES", "Batches one agent runs at once", minimum=1)
    ] = 8
    lease_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_BATCH_LEASE_SECONDS",
            "Lease on a running batch; another agent takes it over after expiry",
            minimum=3,
        ),
    ] = 30.0
    ssh_connect_timeout_seconds: Annotated[
        float, Env("NEOBATCH_SSH_CONNECT_TIMEOUT_SECONDS", "SSH connect timeout")
    ] = 15.0
    # Then the batch fails with `ssh_unreachable`.
    ssh_ready_timeout_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_SSH_READY_TIMEOUT_SECONDS",
            "Longest wait for a new machine to accept SSH, and for a dropped connection to "
            "come back before the machine counts as lost",
        ),
    ] = 120.0
    engine_stop_grace_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_ENGINE_STOP_GRACE_SECONDS",
            "Time between SIGTERM and SIGKILL when stopping an engine",
        ),
    ] = 15.0
    # Claimable: expired leases of dead agents.
    poll_interval_seconds: Annotated[
        float,
        Env("NEOBATCH_RUNNER_POLL_SECONDS", "How often an idle agent looks for claimable batches"),
    ] = 5.0
    ssh_tunnel: Annotated[
        str,
        Env(
            SSH_TUNNEL_ENV,
            "Data path to the engine: `openssh` (an `ssh -N -L` subprocess with a unix socket, "
            "pinned to the same host key; `ssh` must be on PATH), `asyncssh` (a forward on the "
            "agent's own connection), `auto` (OpenSSH when `ssh` is on PATH, else asyncssh)",
            choices=MODES,
            case="lower",
            check=require_openssh_client,
        ),
    ] = "auto"


def read_settings(env: Mapping[str, str] | None = None) -> AgentSettings:
    return read_env(AgentSettings, env)
