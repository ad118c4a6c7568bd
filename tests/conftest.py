"""Fixtures shared by tests/ and tests/e2e/: nats-server run with the NATS logins deploy/ ships."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from neobatch.sim.testing.servers import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    nats_server_binary,
    wait_port,
)

ROOT = Path(__file__).resolve().parents[1]


def authorization_block(conf: str) -> str:
    """The `authorization { ... }` block of a nats.conf, braces matched."""
    start = conf.index("authorization {")
    depth = 0
    for i in range(start, len(conf)):
        depth += {"{": 1, "}": -1}.get(conf[i], 0)
        if conf[i] == "}" and depth == 0:
            return conf[start : i + 1]
    raise AssertionError("unbalanced authorization block")


class ShippedNats:
    """Starts single JetStream servers with the `authorization` block of deploy/'s k8s
    ConfigMap or compose config (the cluster parts left out) and the given passwords."""

    services_password = "p0services1"
    integration_password = "p0integration1"

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._stack = contextlib.ExitStack()

    @staticmethod
    def blocks() -> dict[str, str]:
        k8s = yaml.safe_load_all((ROOT / "deploy/k8s/10-nats.yaml").read_text())
        config_map = next(doc for doc in k8s if doc and doc["kind"] == "ConfigMap")
        compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
        # Compose writes `$$` for a literal `$` (its interpolation escape).
        compose_conf = compose["configs"]["nats_conf"]["content"].replace("$$", "$")
        return {
            "k8s": authorization_block(config_map["data"]["nats.conf"]),
            "compose": authorization_block(compose_conf),
        }

    def __call__(self, where: str = "k8s") -> int:
        """Start one; returns its port (stopped when the fixture ends)."""
        tmp = self._tmp.mktemp(f"nats-{where}")
        port = free_port()
        conf = tmp / "nats.conf"
        conf.write_text(
            f"listen: {LOOPBACK}:{port}\njetstream {{ store_dir: {tmp / 'js'} }}\n"
            + self.blocks()[where]
        )
        env = {
            "NATS_USER": "neobatch",
            "NATS_PASSWORD": self.services_password,
            "NATS_INTEGRATION_PASSWORD": self.integration_password,
        }
        args = [str(nats_server_binary()), "-c", str(conf)]
        proc = self._stack.enter_context(ManagedProcess(args, tmp / "nats.log", env=env))
        wait_port(LOOPBACK, port, 15, process=proc)
        return port

    def services_url(self, port: int) -> str:
        return f"nats://neobatch:{self.services_password}@{LOOPBACK}:{port}"

    def integration_url(self, port: int) -> str:
        return f"nats://integration:{self.integration_password}@{LOOPBACK}:{port}"

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def shipped_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShippedNats]:
    servers = ShippedNats(tmp_path_factory)
    try:
        yield servers
    finally:
        servers.close()
