"""SSH key files as OpenSSH writes them: private keys created 0600, public lines without comment."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh


def public_key_line(key: asyncssh.SSHKey) -> str:
    """``ssh-ed25519 AAAA...`` without a comment, as used in known_hosts / authorized_keys."""
    text = key.convert_to_public().export_public_key("openssh").decode()
    return " ".join(text.split()[:2])


def load_or_create_host_key(path: str | os.PathLike[str]) -> asyncssh.SSHKey:
    """Read a private host key, generating an ed25519 one (mode 0600, plus ``.pub``) if missing."""
    path = Path(path)
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    write_private_key(key, path)
    return key


def write_private_key(key: asyncssh.SSHKey, path: str | os.PathLike[str]) -> None:
    """Write an OpenSSH private key created 0600 from the start (never briefly world-readable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key("openssh"))
    os.chmod(path, 0o600)
    Path(f"{path}.pub").write_text(public_key_line(key) + "\n")
