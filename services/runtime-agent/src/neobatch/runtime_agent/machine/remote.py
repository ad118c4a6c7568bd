"""The SSH control connection to a batch's machine: connect (host key pinned), run, forward.

The scripts it runs come from `launch` (each interpolated value shell-quoted there); every
remote call has a timeout (DESIGN rule 4).

The data path (every inference request) and the control path are two SSH connections. The
control commands (launch, stop, status, logs) and the host-key pin go through this module's
asyncssh connection. The port-forward is, by default (when `ssh` is installed), a separate
OpenSSH client process (`tunnel.py`: `ssh -N -L <socket>:127.0.0.1:<port>`, pinned to the
key asyncssh pinned) with a unix-socket local end: measured on a 2-core machine,
asyncssh's in-process forward costs the agent about 0.05 ms of CPU per request (packet framing
in Python, on the same core as dispatch), OpenSSH about 0.036 ms on the other core, and a unix
socket is cheaper than loopback TCP; the dispatch benchmark must reach 80% of a direct
generator. `NEOBATCH_SSH_TUNNEL` (`auto` | `openssh` | `asyncssh`) picks it;
`forward` returns the base URL either way (`unix:/path` or `http://127.0.0.1:PORT`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncssh

from neobatch.common.contracts import SshEndpoint
from neobatch.common.errors import ConfigError
from neobatch.common.logs import log_fields, redact_text
from neobatch.runtime_agent.machine import tunnel as tunnels
from neobatch.runtime_agent.machine.errors import (
    EngineLaunchFailed,
    EngineStopFailed,
    HostKeyMismatch,
    HostUnreachable,
    RemoteError,
    TunnelFailed,
)
from neobatch.runtime_agent.machine.launch import (
    COMMAND_TIMEOUT_SECONDS,
    EngineLaunch,
    cleanup_command,
    docker_check_script,
    log_command,
    parse_launched,
    start_command,
    status_command,
    stop_command,
)

log = logging.getLogger("neobatch.runtime_agent.machine.remote")

# Every request crosses the SSH tunnel, so cipher cost is dispatch cost. asyncssh's default
# first choice, chacha20-poly1305, builds six cipher contexts per packet in Python; AES-GCM is
# one call into OpenSSL (AES-NI): on a 2-core machine dispatch through the tunnel went from
# about 1,100 to about 1,900 requests/s.
# The rest of asyncssh's defaults follow, for hosts without AES-GCM.
ENCRYPTION_PREFERENCE = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
]


# Removing a batch's work directory (its engine log and pid file; a few files).
CLEANUP_TIMEOUT_SECONDS = 15.0

# Tries to open the OpenSSH tunnel while the control connection stays up (ssh can lose a race
# with a machine that is still settling after a reconnect).
TUNNEL_ATTEMPTS = 3


def load_client_key(path: str) -> asyncssh.SSHKey:
    """Read the agent's private key; errors name the file, never its content."""
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        reason = redact_text(str(exc)) or type(exc).__name__
        raise ConfigError(f"cannot load SSH private key {path}: {reason}") from None


def public_key_line(key: asyncssh.SSHKey) -> str:
    """`ssh-ed25519 AAAA…` (no comment): the form we pin and compare."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


class _PinningClient(asyncssh.SSHClient):
    """Trust on first use: with no pinned key, accept and remember the first key seen.

    With a pinned key, asyncssh accepts only that key (it is passed as known_hosts), and any
    other key reaches this method and is refused.
    """

    def __init__(self, pinned: bool) -> None:
        self._pinned = pinned
        self.closed = asyncio.Event()

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return not self._pinned

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


class RemoteHost:
    """One SSH connection to a batch's machine."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        client: _PinningClient,
        *,
        target: SshEndpoint,
        client_key: asyncssh.SSHKey,
        key_file: str | None = None,
        tunnel: str = "auto",
        connect_timeout_seconds: float = COMMAND_TIMEOUT_SECONDS,
    ) -> None:
        self._conn = conn
        self._client = client
        self._target = target
        self._client_key = client_key
        self._key_file = key_file
        # "openssh" or "asyncssh": how `forward` carries the data path.
        self.tunnel_mode = tunnels.resolve_mode(tunnel)
        self._connect_timeout = connect_timeout_seconds
        self._listeners: list[asyncssh.SSHListener] = []
        self._tunnels: list[tunnels.OpenSshTunnel] = []
        key = conn.get_server_host_key()
        assert key is not None
        self.host_public_key = public_key_line(key)

    @property
    def is_closed(self) -> bool:
        """The control connection (asyncssh) closed."""
        return self._client.closed.is_set()

    @property
    def tunnel_down(self) -> bool:
        """The control connection closed, or the OpenSSH tunnel of the last forward exited:
        requests through the forward cannot get through any more."""
        return self.is_closed or bool(self._tunnels and self._tunnels[-1].is_down)

    async def run(self, script: str, timeout_seconds: float = COMMAND_TIMEOUT_SECONDS) -> str:
        """Run `script` with `sh`; returns stdout, raises RemoteError on failure or timeout."""
        try:
            result = await asyncio.wait_for(
                self._conn.run(script, check=False), timeout=timeout_seconds
            )
        except TimeoutError:
            raise RemoteError(f"remote command timed out after {timeout_seconds:.0f}s") from None
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"remote command failed: {type(exc).__name__}") from None
        stdout = _text(result.stdout)
        if result.exit_status != 0:
            stderr = redact_text(_text(result.stderr).strip())[-300:]
            raise RemoteError(
                f"remote command exited with {result.exit_status}: {stderr or stdout.strip()}"
            )
        return stdout

    async def check_docker(self) -> None:
        """Docker answers (through sudo) and has the NVIDIA runtime, or EngineLaunchFailed."""
        out = (await self.run(docker_check_script())).strip()
        word, _, detail = out.partition(" ")
        if word == "ok":
            return
        if word == "no-docker":
            raise EngineLaunchFailed("docker is not installed on the machine")
        if word == "no-nvidia":
            raise EngineLaunchFailed(
                "the NVIDIA container runtime is missing: docker cannot run --gpus all"
            )
        reason = redact_text(detail.strip())[-300:] or out[:200]
        raise EngineLaunchFailed(f"docker is not usable on the machine: {reason}")

    async def launch(self, launch: EngineLaunch) -> tuple[int, bool]:
        """Start (or find) the engine; returns (pid, reused)."""
        script = start_command(launch)
        if not launch.in_docker:
            out = await self.run(script, launch.launch_timeout_seconds)
        else:
            await self.check_docker()
            try:
                out = await self.run(script, launch.launch_timeout_seconds)
            except RemoteError as exc:
                raise EngineLaunchFailed(f"docker run failed: {exc.message}") from None
        pid, reused = parse_launched(out)
        how = "reused" if reused else "started"
        log.info("engine launched", extra=log_fields(batch_id=launch.batch_id, pid=pid, how=how))
        return pid, reused

    async def is_running(self, launch: EngineLaunch) -> bool:
        return (await self.run(status_command(launch))).strip() == "running"

    async def log_tail(self, launch: EngineLaunch, max_bytes: int = 2000) -> str:
        out = await self.run(log_command(launch, max_bytes))
        return redact_text(out[-max_bytes:])

    async def stop(self, launch: EngineLaunch, grace_seconds: float) -> None:
        """Stop the engine and confirm nothing of it is left; stopping twice is harmless."""
        script = stop_command(launch, grace_seconds)
        try:
            out = await self.run(script, timeout_seconds=grace_seconds + 15)
        except RemoteError as exc:
            raise EngineStopFailed(f"engine did not stop: {exc.message}") from None
        log.info("engine stopped", extra=log_fields(batch_id=launch.batch_id, result=out.strip()))

    async def remove_workdir(self, launch: EngineLaunch) -> str:
        """Remove the batch's work directory (after `stop`); returns what the script printed:
        `removed`, `none`, `kept <why>` or `failed`. Raises RemoteError (timeout included)."""
        out = await self.run(cleanup_command(launch), timeout_seconds=CLEANUP_TIMEOUT_SECONDS)
        return out.strip()

    async def forward(self, remote_port: int) -> str:
        """Forward to the engine's loopback port there; returns the base URL to reach it here.

        `unix:/private/dir/engine.sock` through an OpenSSH subprocess (`tunnel.py`), or
        `http://127.0.0.1:PORT` through this asyncssh connection (`tunnel_mode`). A tunnel that
        went down before (its ssh exited) is let go of first.
        """
        if self.tunnel_mode == "asyncssh":
            listener = await asyncio.wait_for(
                self._conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", remote_port),
                timeout=COMMAND_TIMEOUT_SECONDS,
            )
            self._listeners.append(listener)
            return f"http://127.0.0.1:{int(listener.get_port())}"
        for dead in [t for t in self._tunnels if t.is_down]:
            self._tunnels.remove(dead)
            await dead.close()
        attempt, delay = 1, 0.5
        while True:
            try:
                opened = await tunnels.open_tunnel(
                    self._target,
                    remote_port,
                    host_public_key=self.host_public_key,
                    client_key=self._client_key,
                    key_file=self._key_file,
                    connect_timeout_seconds=self._connect_timeout,
                )
                break
            except HostKeyMismatch:
                raise  # never retried: it does not heal
            except TunnelFailed as exc:
                if self.is_closed:
                    # The machine dropped again (a blip): for the caller this is the connection
                    # lost, which it reconnects or resumes from, not a broken tunnel.
                    raise HostUnreachable(
                        f"connection lost while opening the tunnel: {exc}"
                    ) from exc
                if attempt == TUNNEL_ATTEMPTS:
                    raise
                log.warning(
                    "ssh tunnel failed to open; retrying",
                    extra=log_fields(attempt=attempt, error=exc.message),
                )
                await asyncio.sleep(delay)
                attempt, delay = attempt + 1, delay * 2
        self._tunnels.append(opened)
        return opened.base_url

    async def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        opened_tunnels, self._tunnels = self._tunnels, []
        for opened in opened_tunnels:
            await opened.close()
        self._conn.close()
        try:
            await asyncio.wait_for(self._conn.wait_closed(), timeout=5)
        except TimeoutError:
            self._conn.abort()


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def connect(
    target: SshEndpoint,
    client_key: asyncssh.SSHKey,
    pinned_host_key: str | None,
    *,
    connect_timeout_seconds: float,
    key_file: str | None = None,
    tunnel: str = "auto",
) -> RemoteHost:
    """One connection attempt. The caller pins `RemoteHost.host_public_key` on first use.

    `key_file`: where `client_key` was read from (None: it exists only in memory); `tunnel`:
    the `ssh_tunnel` setting, how `RemoteHost.forward` carries the data path.
    """
    trusted = [asyncssh.import_public_key(pinned_host_key)] if pinned_host_key else []
    client = _PinningClient(pinned=bool(pinned_host_key))
    try:
        conn, _ = await asyncio.wait_for(
            asyncssh.create_connection(
                lambda: client,
                target.host,
                target.port,
                username=target.username,
                client_keys=[client_key],
                # Lists, not a file: only the pinned key counts, never ~/.ssh/known_hosts.
                known_hosts=(trusted, [], []),
                agent_path=None,
                config=[],
                x509_trusted_certs=None,
                encryption_algs=ENCRYPTION_PREFERENCE,
                connect_timeout=connect_timeout_seconds,
                keepalive_interval=15,
                keepalive_count_max=3,
            ),
            timeout=connect_timeout_seconds + 5,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise HostKeyMismatch(
            f"host key of {target.host}:{target.port} does not match the pinned key"
        ) from None
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise HostUnreachable(
            f"cannot reach {target.username}@{target.host}:{target.port}: {type(exc).__name__}"
        ) from None
    return RemoteHost(
        conn,
        client,
        target=target,
        client_key=client_key,
        key_file=key_file,
        tunnel=tunnel,
        connect_timeout_seconds=connect_timeout_seconds,
    )


async def connect_until(
    target: SshEndpoint,
    client_key: asyncssh.SSHKey,
    pinned_host_key: str | None,
    *,
    connect_timeout_seconds: float,
    ready_timeout_seconds: float,
    still_wanted: Callable[[], Awaitable[bool]] | None = None,
    key_file: str | None = None,
    tunnel: str = "auto",
) -> RemoteHost:
    """Retry `connect` with capped backoff until `ready_timeout_seconds` (a booting machine,
    or one whose connection dropped).

    A host key mismatch is never retried: it does not heal, and retrying would only hide it.
    `still_wanted`, asked before each retry, ends the wait early (HostUnreachable) when the
    machine stopped mattering (the batch was moved to a replacement).
    """
    deadline = time.monotonic() + ready_timeout_seconds
    delay = 0.5
    while True:
        try:
            return await connect(
                target,
                client_key,
                pinned_host_key,
                connect_timeout_seconds=connect_timeout_seconds,
                key_file=key_file,
                tunnel=tunnel,
            )
        except HostUnreachable as exc:
            if time.monotonic() + delay >= deadline:
                raise HostUnreachable(
                    f"{exc.message} (gave up after {ready_timeout_seconds:.0f}s)"
                ) from None
            if still_wanted is not None and not await still_wanted():
                raise HostUnreachable(f"{exc.message} (no longer the batch's machine)") from None
            log.info("ssh not reachable yet; retrying", extra=log_fields(error=exc.message))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
