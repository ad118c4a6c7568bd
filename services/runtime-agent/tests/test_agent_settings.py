"""Settings: the SSH key file is refused unless private; its content never appears in errors."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncssh
import pytest

from neobatch.common.errors import ConfigError
from neobatch.runtime_agent.machine.remote import load_client_key
from neobatch.runtime_agent.settings import read_settings


@pytest.fixture
def key_file(tmp_path):
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key("openssh"))
    return path


def test_defaults_and_overrides(key_file) -> None:
    settings = read_settings({"NEOBATCH_SSH_KEY_FILE": str(key_file)})
    assert settings.dispatch.concurrency == 64 and settings.ssh_key_file == str(key_file)
    env = {
        "NEOBATCH_SSH_KEY_FILE": str(key_file),
        "NEOBATCH_DISPATCH_CONCURRENCY": "8",
        "NEOBATCH_SSH_CONNECT_TIMEOUT_SECONDS": "3",
        "NEOBATCH_BATCH_LEASE_SECONDS": "12",
    }
    settings = read_settings(env)
    assert settings.dispatch.concurrency == 8
    assert settings.ssh_connect_timeout_seconds == 3.0 and settings.lease_seconds == 12.0
    assert load_client_key(str(key_file)).algorithm == b"ssh-ed25519"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004])
def test_key_readable_by_others_is_refused(key_file, mode: int) -> None:
    key_file.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        read_settings({"NEOBATCH_SSH_KEY_FILE": str(key_file)})
    assert f"{mode:04o}" in caught.value.message and "chmod 600" in caught.value.message
    assert "PRIVATE KEY" not in caught.value.message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_modes_are_accepted(key_file, mode: int) -> None:
    key_file.chmod(mode)
    read_settings({"NEOBATCH_SSH_KEY_FILE": str(key_file)})


def test_missing_key_setting_or_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="NEOBATCH_SSH_KEY_FILE is required"):
        read_settings({})
    with pytest.raises(ConfigError, match="does not exist"):
        read_settings({"NEOBATCH_SSH_KEY_FILE": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="not a regular file"):
        read_settings({"NEOBATCH_SSH_KEY_FILE": str(tmp_path)})


def test_garbage_key_is_refused_without_echoing_it(tmp_path) -> None:
    path = tmp_path / "key"
    secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    with pytest.raises(ConfigError) as caught:
        load_client_key(str(path))
    assert "c2VjcmV0" not in caught.value.message


def test_service_refuses_to_start_with_an_open_key(key_file) -> None:
    key_file.chmod(0o644)
    env = {**os.environ, "NEOBATCH_SSH_KEY_FILE": str(key_file)}
    proc = subprocess.run(
        [sys.executable, "-m", "neobatch.runtime_agent"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "mode 0644" in proc.stderr and "PRIVATE KEY" not in proc.stderr + proc.stdout
