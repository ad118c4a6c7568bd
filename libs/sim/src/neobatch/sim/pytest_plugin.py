"""Shared pytest fixtures, loaded for every package via ``-p neobatch.sim.pytest_plugin``.

Backing servers (``nats_url``, ``mongo_url``) are session-scoped and synchronous: each comes
from the environment, Docker or a local subprocess (``neobatch.sim.testing.backends``). Tests
share one server each, so isolate by naming: ``mongo_db`` gives every test its own database; use
unique stream/subject names (e.g. a per-test ``NEOBATCH_NAMESPACE``) on NATS.

In-process simulators (``ssh_host``, ``engine_sim``) run on one background event loop thread
(``sim_loop``), not on the test's loop: pytest-asyncio gives each test a fresh loop, and a sync
test would block a server living on it. A background loop serves sync tests, async tests and
subprocesses alike. (Start ``neobatch.sim.engine`` with ``testing.servers.start_python_module``
for throughput tests, where sharing the test process's GIL would skew the numbers.)

Async fixtures (``mongo_db``) use the test's own loop, as pymongo's async client is bound to one.
"""

from __future__ import annotations

import getpass
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

from neobatch.sim.testing.backends import session_mongo, session_nats
from neobatch.sim.testing.background import BackgroundLoop

if TYPE_CHECKING:
    import asyncssh
    from pymongo.asynchronous.database import AsyncDatabase

    from neobatch.sim.engine import EngineConfig
    from neobatch.sim.real_engine import RealEngine


@dataclass(frozen=True)
class SSHKeyPair:
    private_key_path: Path
    public_key_path: Path
    public_key: str  # "ssh-ed25519 AAAA..." (OpenSSH, no comment)


@dataclass(frozen=True)
class SSHHostInfo:
    host: str
    port: int
    username: str
    host_public_key: str
    known_hosts_line: str  # "[127.0.0.1]:PORT ssh-ed25519 AAAA..."
    authorized_keys_path: Path  # re-read per login: append keys to authorize more clients
    workdir: Path  # cwd and $HOME of every command run through this host

    @property
    def known_hosts(self) -> asyncssh.SSHKnownHosts:
        import asyncssh

        return asyncssh.import_known_hosts(self.known_hosts_line + "\n")


@dataclass(frozen=True)
class EngineSimInfo:
    url: str  # http://127.0.0.1:PORT (no /v1)
    port: int
    model: str
    config: EngineConfig

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


# --- backing servers -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a JetStream-enabled NATS server shared by the session."""
    yield from session_nats(tmp_path_factory.mktemp("nats"))


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a MongoDB-compatible replica set (transactions, change streams) for the session."""
    yield from session_mongo(tmp_path_factory.mktemp("mongo"))


@pytest_asyncio.fixture
async def mongo_db(mongo_url: str) -> AsyncIterator[AsyncDatabase]:
    """A database with a unique name on a fresh AsyncMongoClient; dropped afterwards."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient = AsyncMongoClient(mongo_url)
    name = f"test_{uuid.uuid4().hex[:16]}"
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


# --- in-process simulators -------------------------------------------------------------------


@pytest.fixture(scope="session")
def sim_loop() -> Iterator[BackgroundLoop]:
    """The background event loop the in-process simulators run on."""
    with BackgroundLoop() as loop:
        yield loop


@pytest.fixture(scope="session")
def ssh_keypair(tmp_path_factory: pytest.TempPathFactory) -> SSHKeyPair:
    """An unencrypted ed25519 client key pair; the private key file is mode 0600."""
    import asyncssh

    from neobatch.sim.ssh_host import public_key_line, write_private_key

    key_dir = tmp_path_factory.mktemp("ssh-client")
    key_dir.chmod(0o700)
    key = asyncssh.generate_private_key("ssh-ed25519")
    private_path = key_dir / "id_ed25519"
    write_private_key(key, private_path)
    return SSHKeyPair(private_path, Path(f"{private_path}.pub"), public_key_line(key))


@pytest.fixture(scope="session")
def ssh_host(
    sim_loop: BackgroundLoop, ssh_keypair: SSHKeyPair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SSHHostInfo]:
    """A loopback SSH host (asyncssh, runs commands locally) authorized for ``ssh_keypair``."""
    from neobatch.sim.ssh_host import start_ssh_host

    base = tmp_path_factory.mktemp("ssh-host")
    workdir = base / "home"
    workdir.mkdir()
    authorized = base / "authorized_keys"
    authorized.write_text(ssh_keypair.public_key + "\n")
    host = sim_loop.run(
        start_ssh_host("127.0.0.1", 0, authorized, None, workdir, env={"HOME": str(workdir)})
    )
    try:
        yield SSHHostInfo(
            host=host.host,
            port=host.port,
            username=getpass.getuser(),
            host_public_key=host.host_public_key,
            known_hosts_line=host.known_hosts_line,
            authorized_keys_path=authorized,
            workdir=workdir,
        )
    finally:
        sim_loop.run(host.close())


@pytest.fixture
def engine_sim_factory(sim_loop: BackgroundLoop) -> Iterator[Callable[..., EngineSimInfo]]:
    """Start engine simulators with options (model, latency_ms, failure_rate, seed,
    startup_delay_seconds); all are stopped after the test."""
    from neobatch.sim.engine import RunningEngine, start_engine

    started: list[RunningEngine] = []

    def start(**opts: Any) -> EngineSimInfo:
        engine = sim_loop.run(start_engine("127.0.0.1", 0, **opts))
        started.append(engine)
        return EngineSimInfo(engine.url, engine.port, engine.model, engine.config)

    try:
        yield start
    finally:
        for engine in started:
            sim_loop.run(engine.stop())


@pytest.fixture
def engine_sim(engine_sim_factory: Callable[..., EngineSimInfo]) -> EngineSimInfo:
    """An engine simulator with default settings (model ``sim-model``) on a free port."""
    return engine_sim_factory()


# --- the real engine ---------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "real_engine: runs vLLM's CPU build (select with -m real_engine, leave out with "
        "-m 'not real_engine'); skipped when it is not installed unless "
        "NEOBATCH_REQUIRE_REAL_ENGINE=1",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Real-engine tests first: the engine's start-up is the longest single wait in the suite
    and it loads both cores, so starting it while the other worker runs short tests keeps it
    from being the run's tail (xdist hands out files in this order)."""
    items.sort(key=lambda item: item.get_closest_marker("real_engine") is None)


@pytest.fixture(scope="session")
def real_engine() -> RealEngine:
    """vLLM's CPU build (``python``) and the tiny model the suite builds (``model``), from
    ``neobatch.sim.real_engine``. Skips with the reason when the engine venv is missing;
    with ``NEOBATCH_REQUIRE_REAL_ENGINE=1`` (CI) a missing engine fails instead."""
    from neobatch.sim import real_engine as engine

    found = engine.find()
    if found is None:
        if engine.required():
            pytest.fail(f"{engine.REQUIRE_ENV}=1 but {engine.missing_reason()}")
        pytest.skip(engine.missing_reason())
    return found


# --- cloud provider simulators ---------------------------------------------------------------


@dataclass(frozen=True)
class ProviderSimInfo:
    """A running RunPod or Lambda simulator: ``url`` is the provider's base URL setting."""

    url: str
    root: str  # scheme://host:port, where the admin API (/_sim/...) lives
    api_key: str
    sim: Any  # the CloudSim itself (read-only from tests: it lives on the sim loop)
    ssh_port: int = 0  # Lambda: the port every instance serves SSH on

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        import httpx

        response = httpx.request(method, f"{self.root}/_sim{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def faults(self, **switches: Any) -> Any:
        return self.admin("POST", "/faults", switches)

    def live_machines(self) -> list[dict[str, Any]]:
        return list(self.admin("GET", "/state")["machines"])


SIM_TIME_FACTOR = 0.01  # RunPod boot 0.3 s, Lambda boot 2.4 s, Lambda launch spacing 0.12 s


@pytest.fixture
def runpod_sim(sim_loop: BackgroundLoop) -> Iterator[ProviderSimInfo]:
    """A RunPod REST v2 simulator (time factor ``SIM_TIME_FACTOR``); stopped after the test."""
    from neobatch.sim.runpod import start_runpod_sim

    api_key = f"rpa_{uuid.uuid4().hex}"
    running = sim_loop.run(start_runpod_sim(api_key=api_key, time_factor=SIM_TIME_FACTOR))
    try:
        yield ProviderSimInfo(running.url, running.root, api_key, running.sim)
    finally:
        sim_loop.run(running.stop())


@pytest.fixture
def lambda_sim(sim_loop: BackgroundLoop, ssh_keypair: SSHKeyPair) -> Iterator[ProviderSimInfo]:
    """A Lambda Cloud simulator with ``ssh_keypair`` registered as key ``neobatch-test``."""
    from neobatch.sim.lambda_cloud import start_lambda_sim

    api_key = f"secret_sim.{uuid.uuid4().hex}"
    running = sim_loop.run(
        start_lambda_sim(
            api_key=api_key,
            time_factor=SIM_TIME_FACTOR,
            ssh_keys={"neobatch-test": ssh_keypair.public_key},
        )
    )
    try:
        yield ProviderSimInfo(
            running.url, running.root, api_key, running.sim, ssh_port=running.sim.ssh_port
        )
    finally:
        sim_loop.run(running.stop())
