"""Builders for the runtime-agent tests, handed out as fixtures.

Test modules cannot import each other in pytest's importlib mode, so the shared helpers are
fixtures; the backing servers and simulators come from `neobatch.sim.pytest_plugin`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import pytest_asyncio

from neobatch.common import filestore
from neobatch.common.clock import utcnow
from neobatch.common.contracts import (
    BatchRequested,
    BatchStatus,
    BatchStatusReported,
    BatchTerminal,
    EngineSpec,
    Event,
    SshEndpoint,
    decode_event,
)
from neobatch.common.settings import CommonSettings
from neobatch.runtime_agent.app import Agent, build_agent
from neobatch.runtime_agent.batch.batches import Batch
from neobatch.runtime_agent.batch.store import BatchStore
from neobatch.runtime_agent.dispatch.policy import DispatchDefaults
from neobatch.runtime_agent.dispatch.tally import RequestResult
from neobatch.runtime_agent.machine.launch import workdir
from neobatch.runtime_agent.results.pages import RESULTS, store_results
from neobatch.runtime_agent.settings import AgentSettings
from neobatch.sim.devstack.sample_batch import sample_request
from neobatch.sim.engine import expected_body
from neobatch.sim.procs import live_pids
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until

MODEL = "sim-model"
CHAT = "/v1/chat/completions"
# Dispatch in tests: fewer in flight, short timeouts, one retry.
TEST_DISPATCH = DispatchDefaults(concurrency=32, request_timeout_seconds=30.0, max_retries=1)


# The batch ids this test handed out: what `_leave_no_work_directory` removes after it.
_ISSUED: list[str] = []


def new_batch_id() -> str:
    batch_id = f"batch_{uuid.uuid4().hex}"
    _ISSUED.append(batch_id)
    return batch_id


@pytest.fixture(autouse=True)
def _leave_no_work_directory() -> Iterator[None]:
    """After each test, nothing of its batches on this machine (the loopback SSH host's
    `/tmp/neobatch/<batch>`): a test that ends mid-batch, or drives `RemoteHost` directly,
    leaves the engine running or its directory behind, and hundreds of them piled up here.
    Only this test's own batch ids: other test runs share the directory."""
    _ISSUED.clear()
    yield
    # A spread batch's machines each have their own (`<batch>.<provision>`).
    paths = [Path(workdir(b)) for b in _ISSUED]
    paths += [p for b in _ISSUED for p in Path(workdir(b)).parent.glob(f"{b}.*")]
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            pgid = int((path / "pid").read_text().strip())
            # Only the engine started there (it runs in its directory), never a reused pid.
            if os.readlink(f"/proc/{pgid}/cwd") == str(path):
                os.killpg(pgid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)
    _ISSUED.clear()


def sim_engine_spec(
    *, port: int | None = None, extra_args: list[str] | None = None, ready_timeout: float = 30.0
) -> EngineSpec:
    """An engine spec whose template command launches the engine simulator on the host."""
    command = [sys.executable, "-m", "neobatch.sim.engine", "--host", "127.0.0.1"]
    command += ["--port", "{port}", "--model", "{model}", *(extra_args or [])]
    return EngineSpec(
        serving_name=MODEL,
        model_uri="sim://model",
        command=command,
        port=port or free_port(),
        ready_timeout_seconds=ready_timeout,
    )


def target_for(ssh_host: Any, *, pin: bool = False) -> SshEndpoint:
    return SshEndpoint(
        host=ssh_host.host,
        port=ssh_host.port,
        username=ssh_host.username,
        host_public_key=ssh_host.host_public_key if pin else None,
    )


def batch_requested(
    *,
    batch_id: str,
    input_file_id: str,
    target: SshEndpoint,
    engine: EngineSpec,
    expires_at: datetime | None = None,
) -> BatchRequested:
    return BatchRequested(
        batch_id=batch_id,
        job_id=f"job_{uuid.uuid4().hex}",
        provision_id=f"prov_{uuid.uuid4().hex}",
        input_file_id=input_file_id,
        endpoint=CHAT,
        owner="user-1",
        target=target,
        engine=engine,
        expires_at=expires_at,
    )


# --- a runner against the real database and SSH host ----------------------------------------


def engine_pids(port: int) -> list[int]:
    """Running processes whose command line carries `--port <port>`."""
    return live_pids(f"--port\0{port}\0".encode())


@dataclass
class Harness:
    agent: Agent
    settings: AgentSettings
    ssh_host: Any
    # The runner loop's task (a test may cancel it to play a dead agent).
    runner_task: asyncio.Task[None] | None = None

    @property
    def store(self) -> BatchStore:
        return self.agent.store

    async def seed_finished(self, batch_id: str, lines: list[dict[str, Any]], done: Any) -> None:
        """Checkpoints a previous owner left: lines `done` answered 200 as the engine would."""
        results = [
            RequestResult(
                line_index=i,
                custom_id=lines[i]["custom_id"],
                status_code=200,
                request_id=f"{batch_id}-{i}",
                body=json.dumps(expected_body(CHAT, lines[i]["body"])).encode(),
                attempts=1,
            )
            for i in done
        ]
        await store_results(self.db[RESULTS], batch_id, results, utcnow())

    @property
    def db(self) -> Any:
        return self.agent.runtime.db

    @property
    def ns(self) -> str:
        return self.settings.common.namespace

    async def upload(self, lines: list[dict[str, Any]] | list[bytes]) -> str:
        file_id = filestore.new_file_id()
        raw = b"".join(
            (item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n"
            for item in lines
        )

        async def chunks() -> AsyncIterator[bytes]:
            yield raw

        await filestore.save_file(
            self.db, file_id, "input.jsonl", chunks(), purpose="batch", owner="user-1"
        )
        return file_id

    async def submit(
        self,
        lines: list[dict[str, Any]] | list[bytes],
        engine: EngineSpec,
        *,
        expires_at: datetime | None = None,
        target: SshEndpoint | None = None,
    ) -> BatchRequested:
        event = batch_requested(
            batch_id=new_batch_id(),
            input_file_id=await self.upload(lines),
            target=target or target_for(self.ssh_host),
            engine=engine,
            expires_at=expires_at,
        )
        await self.agent.handlers.on_batch_requested(event)
        return event

    async def wait_terminal(self, batch_id: str, within_seconds: float = 60) -> Batch:
        async def terminal() -> Batch | None:
            batch = await self.store.find_batch(batch_id)
            return batch if batch is not None and batch.status.is_terminal else None

        return await wait_until(terminal, within_seconds, message=f"{batch_id} to end")

    async def wait_results(self, batch_id: str, at_least: int, within_seconds: float = 30) -> None:
        """Until at least `at_least` results of the batch are checkpointed."""

        async def enough() -> bool:
            return len(await self.store.finished_lines(batch_id)) >= at_least

        await wait_until(enough, within_seconds, message=f"{at_least} results of {batch_id}")

    async def read_file(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        lines = [line async for line in filestore.iter_lines(self.db, file_id)]
        return [json.loads(line) for line in lines]

    async def events(self, batch_id: str) -> list[tuple[str, Event]]:
        """(subject suffix, event) from the outbox for one batch, in commit order."""
        found = []
        cursor = self.db["outbox"].find({}).sort("created_at", 1)
        async for doc in cursor:
            suffix = doc["subject"].removeprefix(self.ns + ".")
            kind = {"batch.status": BatchStatusReported, "batch.terminal": BatchTerminal}[suffix]
            event = decode_event(doc["payload"], kind)
            if event.batch_id == batch_id:
                found.append((suffix, event))
        return found


def chat_lines(n: int, model: str = MODEL) -> list[dict[str, Any]]:
    return [sample_request(i, model) for i in range(1, n + 1)]


async def engine_request_count(url: str, status: int = 200) -> int:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    series = f'neobatch_sim_requests_total{{path="{CHAT}",status="{status}"}} '
    for line in text.splitlines():
        if line.startswith(series):
            return int(float(line.removeprefix(series)))
    return 0


@pytest_asyncio.fixture
async def make_harness(mongo_url, mongo_db, ssh_keypair, ssh_host):
    """`await make_harness(**settings)`: an agent on this test's database, runner running."""
    started: list[tuple[Harness, asyncio.Task[None]]] = []

    async def make(dispatch: dict[str, Any] | None = None, **overrides: Any) -> Harness:
        """`dispatch`: fields of `DispatchDefaults` over the tests' own (32 in flight, ...)."""
        common = CommonSettings(
            mongo_url=mongo_url, db_name=mongo_db.name, namespace=f"t{uuid.uuid4().hex[:12]}"
        )
        options: dict[str, Any] = {
            "dispatch": msgspec.structs.replace(TEST_DISPATCH, **(dispatch or {})),
            "lease_seconds": 6.0,
            "ssh_connect_timeout_seconds": 5.0,
            "ssh_ready_timeout_seconds": 5.0,
            "engine_stop_grace_seconds": 3.0,
            "poll_interval_seconds": 0.2,
        }
        options.update(overrides)
        settings = AgentSettings(
            common=common, ssh_key_file=str(ssh_keypair.private_key_path), **options
        )
        built = build_agent(settings)
        await built.store.ensure_indexes()
        harness = Harness(built, settings, ssh_host)
        harness.runner_task = asyncio.create_task(built.runner.run())
        started.append((harness, harness.runner_task))
        return harness

    yield make
    for harness, task in started:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await harness.agent.runtime.mongo.close()


def accepted(event: BatchRequested) -> BatchStatusReported:
    """The event the agent records with a new batch document."""
    return BatchStatusReported(
        batch_id=event.batch_id, job_id=event.job_id, status=BatchStatus.VALIDATING
    )


class AgentFactories:
    """What the tests build repeatedly, in one place."""

    new_batch_id = staticmethod(new_batch_id)
    sim_engine_spec = staticmethod(sim_engine_spec)
    target_for = staticmethod(target_for)
    batch_requested = staticmethod(batch_requested)
    chat_lines = staticmethod(chat_lines)
    accepted = staticmethod(accepted)
    engine_pids = staticmethod(engine_pids)
    engine_request_count = staticmethod(engine_request_count)


@pytest.fixture
def agent() -> AgentFactories:
    return AgentFactories()
