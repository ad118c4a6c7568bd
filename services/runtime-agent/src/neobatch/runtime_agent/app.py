"""Composition root: settings → runtime (Mongo, broker, outbox relay) → store, runner, handlers."""

from __future__ import annotations

from dataclasses import dataclass

from neobatch.common.broker import subscribe
from neobatch.common.clock import Clock
from neobatch.common.contracts import BatchCancelRequested, BatchMachineRemoved, BatchRequested
from neobatch.common.runtime import ServiceRuntime
from neobatch.runtime_agent.batch.runner import Runner
from neobatch.runtime_agent.batch.store import BatchStore
from neobatch.runtime_agent.handlers import BatchHandlers
from neobatch.runtime_agent.machine.remote import load_client_key
from neobatch.runtime_agent.settings import AgentSettings

SERVICE = "runtime-agent"


@dataclass(frozen=True)
class Agent:
    runtime: ServiceRuntime
    store: BatchStore
    runner: Runner
    handlers: BatchHandlers


def build_agent(
    settings: AgentSettings,
    *,
    clock: Clock | None = None,
    owner: str | None = None,
) -> Agent:
    runtime = ServiceRuntime(SERVICE, settings.common, clock)
    store = BatchStore.from_runtime(
        runtime, checkpoint_max_pending_bytes=settings.checkpoint_max_pending_bytes
    )
    key = load_client_key(settings.ssh_key_file)
    runner = Runner(store, runtime.clock, settings, key, owner=owner)
    handlers = BatchHandlers(store, runtime.clock, runner.wake)
    subscribe(runtime.broker, runtime.ns, SERVICE, BatchRequested, handlers.on_batch_requested)
    subscribe(
        runtime.broker,
        runtime.ns,
        SERVICE,
        BatchCancelRequested,
        handlers.on_batch_cancel_requested,
    )
    subscribe(
        runtime.broker,
        runtime.ns,
        SERVICE,
        BatchMachineRemoved,
        handlers.on_batch_machine_removed,
    )
    runtime.add_startup(store.ensure_indexes)
    runtime.add_loop("batch-runner", runner.run)
    return Agent(runtime, store, runner, handlers)


async def run_agent(settings: AgentSettings) -> None:
    agent = build_agent(settings)
    await agent.runtime.run()
