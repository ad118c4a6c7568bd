"""Composition root of the resource-manager."""

from __future__ import annotations

from neobatch.common.runtime import ServiceRuntime
from neobatch.resource_manager.driver import ProvisionDriver
from neobatch.resource_manager.handlers import SERVICE, ProvisionEventHandler, register
from neobatch.resource_manager.providers.base import Provider
from neobatch.resource_manager.providers.ssh_pool import SshPoolProvider, parse_pool
from neobatch.resource_manager.settings import ResourceManagerSettings
from neobatch.resource_manager.store import ProvisionStore


def build(settings: ResourceManagerSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(SERVICE, settings.common)
    store = ProvisionStore(runtime.mongo, runtime.db, runtime.ns)
    providers: dict[str, Provider] = {}
    ssh_pool: SshPoolProvider | None = None
    if "ssh" in settings.provisioners:
        ssh_pool = SshPoolProvider(runtime.db, parse_pool(settings.ssh_pool))
        providers["ssh"] = ssh_pool
    driver = ProvisionDriver(store, providers, runtime.clock, runtime.notify_outbox)
    handler = ProvisionEventHandler(
        store, runtime.clock, settings.provisioners, driver.wake, runtime.notify_outbox
    )
    register(runtime.broker, runtime.ns, handler)

    async def prepare() -> None:
        await store.ensure_indexes()
        if ssh_pool is not None:
            await ssh_pool.sync_pool()

    runtime.add_startup(prepare)
    runtime.add_loop("provision-driver", driver.run)
    return runtime
