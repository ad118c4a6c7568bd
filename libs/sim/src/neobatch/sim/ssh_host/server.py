"""A loopback SSH host double: asyncssh server that runs commands locally through ``/bin/sh -c``.

Behaves like a locked-down sshd for the SSH provisioner: public-key auth only (keys from an
authorized_keys file, re-read on every login like sshd, or a fixed list), no password or
keyboard-interactive auth, ``direct-tcpip`` local forwards only to loopback destinations, no remote
forwards. SFTP/SCP are served from the local filesystem. Any username is accepted because every
session runs as the user running this server. Each session's command runs as a local child
(``session.run_session``); the command line is in ``__main__``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from neobatch.sim.ssh_host.keys import load_or_create_host_key, public_key_line
from neobatch.sim.ssh_host.session import run_session
from neobatch.sim.testing.servers import is_loopback

log = logging.getLogger(__name__)

KeySource = str | os.PathLike[str] | Sequence[str]
HostKeySource = asyncssh.SSHKey | str | os.PathLike[str] | None


class _AuthorizedKeys:
    """Either a file re-read per login (so keys can be added while running) or fixed content."""

    def __init__(self, source: KeySource) -> None:
        self._path: Path | None = None
        self._fixed: asyncssh.SSHAuthorizedKeys | None = None
        # A key line always contains a space; a bare token is taken as a file path.
        if isinstance(source, os.PathLike) or (isinstance(source, str) and " " not in source):
            self._path = Path(source)
        elif isinstance(source, str):
            self._fixed = _parse_authorized_keys(source)
        else:
            self._fixed = _parse_authorized_keys("\n".join(source))

    def current(self) -> asyncssh.SSHAuthorizedKeys:
        if self._fixed is not None:
            return self._fixed
        assert self._path is not None
        try:
            return _parse_authorized_keys(self._path.read_text())
        except (OSError, ValueError) as exc:
            # A missing or broken file means nobody gets in, as with sshd.
            log.warning("cannot use authorized keys %s: %s", self._path, exc)
            return asyncssh.import_authorized_keys("")


def _parse_authorized_keys(text: str) -> asyncssh.SSHAuthorizedKeys:
    # asyncssh rejects a file of only comments/blank lines; for us that just means "no keys".
    lines = [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    return asyncssh.import_authorized_keys("\n".join(lines) + "\n" if lines else "")


class _HostServer(asyncssh.SSHServer):
    def __init__(self, host: SSHHost) -> None:
        self._host = host
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._host._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._host._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        assert self._conn is not None
        self._conn.set_authorized_keys(self._host._authorized_keys.current())
        return True

    def public_key_auth_supported(self) -> bool:
        # Offer publickey even when the key list is empty, so clients see a normal rejection.
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        if is_loopback(dest_host):
            if self._host.loopback_address and self._conn is not None:
                return self._conn.forward_connection(self._host.loopback_address, dest_port)
            return True
        log.info("refused direct-tcpip to %s:%s", dest_host, dest_port)
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            f"port forwarding to {dest_host} is not permitted (loopback only)",
        )

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # No remote (-R) forwards.


@dataclass(eq=False)
class SSHHost:
    """A running SSH host double. Use ``known_hosts`` with asyncssh to pin its key."""

    host: str
    port: int
    host_key: asyncssh.SSHKey
    workdir: str | None
    _authorized_keys: _AuthorizedKeys
    # The machine's own loopback address (a simulated cloud machine): a forward to any loopback
    # destination reaches it there, as a forward to a real machine's 127.0.0.1 reaches that
    # machine, so several machines' engines on one port do not meet. None: as asked.
    loopback_address: str | None = None
    _acceptor: asyncssh.SSHAcceptor | None = None
    _connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)

    @property
    def host_public_key(self) -> str:
        return public_key_line(self.host_key)

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_public_key}"

    @property
    def known_hosts(self) -> asyncssh.SSHKnownHosts:
        return asyncssh.import_known_hosts(self.known_hosts_line + "\n")

    async def drop_connections(self) -> int:
        """Drop every live connection but keep listening (a network blip, not a reboot)."""
        dropped = list(self._connections)
        for conn in dropped:
            conn.abort()
        for conn in dropped:
            await conn.wait_closed()
        return len(dropped)

    async def close(self) -> None:
        """Stop listening and drop live connections (their commands get SIGHUP)."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for conn in list(self._connections):
            conn.close()
        for conn in list(self._connections):
            await conn.wait_closed()


async def start_ssh_host(
    host: str = "127.0.0.1",
    port: int = 0,
    authorized_keys: KeySource = (),
    host_key: HostKeySource = None,
    workdir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    loopback_address: str | None = None,
) -> SSHHost:
    """Serve on ``host:port`` (0 = free port) in the running loop.

    ``authorized_keys``: a list of OpenSSH public key lines, an authorized_keys file path
    (re-read per login), or authorized_keys text. ``host_key``: an SSHKey, a path (created if
    missing) or None for a fresh in-memory ed25519 key. ``workdir``: cwd of every command
    (default: the home directory, as with sshd). ``env``: extra environment for every command
    (e.g. ``HOME`` pointing at a sandbox), applied before the client's own variables.
    """
    if host_key is None:
        key = asyncssh.generate_private_key("ssh-ed25519")
    elif isinstance(host_key, asyncssh.SSHKey):
        key = host_key
    else:
        key = load_or_create_host_key(host_key)
    cwd = os.fspath(workdir) if workdir is not None else str(Path.home())
    ssh_host = SSHHost(host, port, key, cwd, _AuthorizedKeys(authorized_keys), loopback_address)
    acceptor = await asyncssh.create_server(
        functools.partial(_HostServer, ssh_host),
        host,
        port,
        server_host_keys=[key],
        process_factory=functools.partial(run_session, workdir=cwd, env=env),
        encoding=None,
        sftp_factory=True,
        allow_scp=True,
        password_auth=False,
        kbdint_auth=False,
        x509_trusted_certs=None,
        gss_host=None,
    )
    ssh_host.port = int(acceptor.get_port())
    ssh_host._acceptor = acceptor
    return ssh_host
