"""The data path to a batch's engine: OpenSSH's client as a subprocess, forwarding a unix socket.

`ssh -N -L <private dir>/engine.sock:127.0.0.1:<engine port>` runs as a process of its own, so
the packet framing and encryption of every request happen in C on the other core instead of in
the agent's event loop (why: see `remote`'s docstring). The control commands (launch, stop,
status, logs) stay on the agent's asyncssh connection, which pinned the machine's host key first;
this tunnel trusts exactly that key and nothing else:

- no configuration file (`-F /dev/null`), no agent, only our identity (`IdentitiesOnly`);
- a known_hosts file written by us holding only the pinned key, the global one disabled,
  `StrictHostKeyChecking=yes` and `HostKeyAlgorithms` limited to the pinned key's type, so a
  machine presenting another key is refused (`TunnelHostKeyMismatch`);
- `BatchMode` (never a prompt), `ExitOnForwardFailure` (no tunnel without its forward),
  keepalives, a connect timeout, and cheap AEAD ciphers first.

Everything lives in a private directory (0700) under the temp dir: the socket, the known_hosts
file, and the client key when the agent only holds it in memory (written 0600). The argv names
files only, never a secret. `close()` ends ssh (TERM, then KILL after a grace period), reaps it
and removes the directory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import asyncssh

from neobatch.common.contracts import SshEndpoint
from neobatch.common.errors import ConfigError
from neobatch.common.logs import log_fields, redact_text
from neobatch.runtime_agent.machine.errors import TunnelFailed, TunnelHostKeyMismatch

log = logging.getLogger("neobatch.runtime_agent.machine.tunnel")

MODES = ("auto", "openssh", "asyncssh")
# AEAD ciphers, cheapest first: AES-GCM is one OpenSSL call with AES-NI.
CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com"
SOCKET_NAME = "engine.sock"
# sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH = 107
CLOSE_GRACE_SECONDS = 2.0
KILL_WAIT_SECONDS = 5.0
STDERR_TAIL_BYTES = 2000
# A host key of type ssh-rsa signs with SHA-2 (OpenSSH refuses ssh-rsa's SHA-1 by default).
_HOST_KEY_ALGORITHMS = {"ssh-rsa": "rsa-sha2-512,rsa-sha2-256"}
_HOST_KEY_FAILURES = (
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "no matching host key type found",
)


def ssh_binary() -> str | None:
    return shutil.which("ssh")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"NEOBATCH_SSH_TUNNEL must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def resolve_mode(mode: str) -> str:
    """`openssh` or `asyncssh`: what a forward uses under the `ssh_tunnel` setting."""
    if check_mode(mode) != "auto":
        return mode
    # OpenSSH whenever `ssh` is installed; asyncssh's in-process forward is the fallback.
    return "openssh" if ssh_binary() else "asyncssh"


def known_hosts_line(host: str, port: int, host_public_key: str) -> str:
    """The pinned key as OpenSSH looks it up: `[host]:port type base64` (plain `host` on 22)."""
    key_type, blob = host_public_key.split()[:2]
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {key_type} {blob}\n"


def parent_death_guard() -> list[str]:
    """A prefix that makes ssh get SIGTERM when the agent dies, even by SIGKILL (Linux).

    ssh would otherwise keep forwarding for as long as the machine answers. `setpriv
    --pdeathsig` (util-linux) sets PR_SET_PDEATHSIG and execs ssh, so the pid stays ssh's; no
    preexec_fn in our own (threaded) process. Empty where setpriv is missing.
    """
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _literal(path: str) -> str:
    """ssh expands `%` tokens in these paths: keep a `%` in a path literal."""
    return path.replace("%", "%%")


def check_destination(target: SshEndpoint) -> None:
    """A user or host that ssh could read as an option, or split differently, is refused."""
    for what, value in (("user", target.username), ("host", target.host)):
        bad = not value or value.startswith("-") or any(c.isspace() or ord(c) < 32 for c in value)
        if bad or (what == "host" and "@" in value):
            raise TunnelFailed(f"refusing an ssh {what} that is not a plain name: {value!r}")


def host_key_algorithms(host_public_key: str) -> str:
    key_type = host_public_key.split()[0]
    return _HOST_KEY_ALGORITHMS.get(key_type, key_type)


def ssh_argv(
    ssh: str,
    target: SshEndpoint,
    *,
    socket_path: str,
    remote_port: int,
    key_file: str,
    known_hosts_file: str,
    host_public_key: str,
    connect_timeout_seconds: float,
) -> list[str]:
    """The ssh command line: paths and options only, no secret, no shell."""
    check_destination(target)
    options = {
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "BatchMode": "yes",
        "ExitOnForwardFailure": "yes",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": _literal(known_hosts_file),
        "GlobalKnownHostsFile": "/dev/null",
        "UpdateHostKeys": "no",
        "HostKeyAlgorithms": host_key_algorithms(host_public_key),
        "ServerAliveInterval": "15",
        "ServerAliveCountMax": "3",
        "ConnectTimeout": str(max(1, math.ceil(connect_timeout_seconds))),
        "Ciphers": CIPHERS,
        "LogLevel": "ERROR",
        "StreamLocalBindUnlink": "yes",
        "StreamLocalBindMask": "0177",
        "ControlMaster": "no",
        "ControlPath": "none",
    }
    # The identity as `-o IdentityFile=`, not `-i`: ssh checks a `-i` path before expanding its
    # `%` tokens, so an escaped `%` there would drop the key.
    argv = [ssh, "-N", "-F", "/dev/null", "-o", f"IdentityFile={_literal(key_file)}"]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    argv += ["-L", f"{_literal(socket_path)}:127.0.0.1:{int(remote_port)}"]
    # `--`: whatever the destination holds, ssh never reads it as an option.
    argv += ["-p", str(int(target.port)), "--", f"{target.username}@{target.host}"]
    return argv


class OpenSshTunnel:
    """One running `ssh -N -L <socket>:127.0.0.1:<port>`; build it with `open_tunnel`."""

    def __init__(self, proc: asyncio.subprocess.Process, private_dir: Path) -> None:
        self._proc = proc
        self._dir = private_dir
        self.socket_path = str(private_dir / SOCKET_NAME)
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0
        self._drain = asyncio.create_task(self._read_stderr())
        self._closed = False

    @property
    def base_url(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def is_down(self) -> bool:
        """True once ssh exited (or the tunnel was closed): nothing forwards any more."""
        return self._closed or self._proc.returncode is not None

    def stderr_tail(self) -> str:
        text = b"".join(self._stderr).decode(errors="replace").strip()
        return redact_text(text)[-500:]

    async def _read_stderr(self) -> None:
        # Drained all along, so ssh never blocks on a full pipe; only the tail is kept.
        stream = self._proc.stderr
        assert stream is not None
        while chunk := await stream.read(4096):
            self._stderr.append(chunk)
            self._stderr_size += len(chunk)
            while self._stderr_size > STDERR_TAIL_BYTES and len(self._stderr) > 1:
                self._stderr_size -= len(self._stderr.popleft())

    async def _exit_message(self) -> str:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), timeout=1.0)
        return self.stderr_tail() or f"exit status {self._proc.returncode}"

    async def wait_ready(self, timeout_seconds: float) -> None:
        """Until the socket accepts a connection; TunnelFailed if ssh exits first or time runs out."""
        deadline = time.monotonic() + timeout_seconds
        delay = 0.01
        while True:
            if self._proc.returncode is not None:
                tail = await self._exit_message()
                error = TunnelFailed
                if any(marker in tail for marker in _HOST_KEY_FAILURES):
                    error = TunnelHostKeyMismatch
                raise error(f"ssh tunnel exited before it was ready: {tail}")
            if os.path.exists(self.socket_path):
                try:
                    _, writer = await asyncio.wait_for(
                        asyncio.open_unix_connection(self.socket_path), timeout=1.0
                    )
                except (OSError, TimeoutError):
                    pass
                else:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    return
            if time.monotonic() >= deadline:
                raise TunnelFailed(
                    f"ssh tunnel not ready after {timeout_seconds:.0f}s: "
                    f"{self.stderr_tail() or 'no socket yet'}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def close(self) -> None:
        """Stop ssh (TERM, then KILL), reap it, remove the private directory. Idempotent."""
        self._closed = True
        proc = self._proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=CLOSE_GRACE_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                try:
                    await asyncio.wait_for(proc.wait(), timeout=KILL_WAIT_SECONDS)
                except TimeoutError:
                    log.error(
                        "ssh tunnel did not exit after SIGKILL", extra=log_fields(pid=proc.pid)
                    )
        self._drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drain
        shutil.rmtree(self._dir, ignore_errors=True)


async def open_tunnel(
    target: SshEndpoint,
    remote_port: int,
    *,
    host_public_key: str,
    client_key: asyncssh.SSHKey,
    key_file: str | None,
    connect_timeout_seconds: float,
    ready_timeout_seconds: float | None = None,
) -> OpenSshTunnel:
    """Start ssh forwarding a private unix socket to `127.0.0.1:remote_port` on the machine.

    `host_public_key` is the key the asyncssh connection pinned (`type base64`); `key_file` the
    agent's private key file, or None when the key only exists in memory (it is then written
    0600 into the private directory). Returns once the socket accepts connections.
    """
    ssh = ssh_binary()
    if ssh is None:
        raise TunnelFailed("the OpenSSH client (ssh) is not installed; set NEOBATCH_SSH_TUNNEL")
    private_dir = Path(tempfile.mkdtemp(prefix="neobatch-tunnel-"))  # mode 0700
    try:
        os.chmod(private_dir, 0o700)
        socket_path = str(private_dir / SOCKET_NAME)
        if len(socket_path.encode()) > MAX_SOCKET_PATH:
            raise TunnelFailed(f"temp dir path too long for a unix socket: {socket_path}")
        known_hosts = private_dir / "known_hosts"
        _write_private(known_hosts, known_hosts_line(target.host, target.port, host_public_key))
        if key_file is None:
            key_file = str(private_dir / "id")
            _write_private(Path(key_file), client_key.export_private_key("openssh").decode())
        argv = ssh_argv(
            ssh,
            target,
            socket_path=socket_path,
            remote_port=remote_port,
            key_file=key_file,
            known_hosts_file=str(known_hosts),
            host_public_key=host_public_key,
            connect_timeout_seconds=connect_timeout_seconds,
        )
        proc = await asyncio.create_subprocess_exec(
            *parent_death_guard(),
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # In the agent's process group (no new session): whatever stops the agent's group
            # (a supervisor, a test harness, Ctrl-C) stops its tunnels too, none left behind;
            # the death guard covers the agent alone being killed.
        )
    except BaseException:
        shutil.rmtree(private_dir, ignore_errors=True)
        raise
    tunnel = OpenSshTunnel(proc, private_dir)
    try:
        await tunnel.wait_ready(
            ready_timeout_seconds
            if ready_timeout_seconds is not None
            else connect_timeout_seconds + 5
        )
    except BaseException:
        await tunnel.close()
        raise
    log.info(
        "ssh tunnel ready",
        extra=log_fields(host=target.host, port=target.port, remote_port=remote_port, pid=proc.pid),
    )
    return tunnel


def _write_private(path: Path, text: str) -> None:
    """Create a 0600 file (never briefly readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
