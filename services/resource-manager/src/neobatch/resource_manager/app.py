"""Composition root of the resource-manager."""

from __future__ import annotations

from neobatch.common.runtime import ServiceRuntime
from neobatch.common.throughput_store import ThroughputStore
from neobatch.resource_manager.driver import ProvisionDriver
from neobatch.resource_manager.handlers import (
    SERVICE,
    ProvisionEventHandler,
    ThroughputLearner,
    register,
)
from neobatch.resource_manager.providers.base import Provider
from neobatch.resource_manager.providers.lambda_cloud import LambdaCloudProvider
from neobatch.resource_manager.providers.runpod import RunPodProvider
from neobatch.resource_manager.providers.ssh_pool import (
    SshPoolProvider,
    parse_pool,
    parse_prices,
)
from neobatch.resource_manager.reconciler import Reconciler
from neobatch.resource_manager.settings import ResourceManagerSettings
from neobatch.resource_manager.store import ProvisionStore


def cloud_providers(settings: ResourceManagerSettings) -> dict[str, Provider]:
    """The configured providers that rent machines by offer, by the name jobs give them."""
    budget = settings.retry_budget_seconds
    clouds: list[Provider] = []
    if settings.runpod is not None:
        clouds.append(RunPodProvider(settings.runpod, retry_budget_seconds=budget))
    if settings.lambda_cloud is not None:
        clouds.append(LambdaCloudProvider(settings.lambda_cloud, retry_budget_seconds=budget))
    return {cloud.name: cloud for cloud in clouds}


def build(settings: ResourceManagerSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(SERVICE, settings.common)
    store = ProvisionStore(runtime.mongo, runtime.db, runtime.ns)
    samples = ThroughputStore(runtime.db)
    providers: dict[str, Provider] = {}
    pool: SshPoolProvider | None = None
    if "ssh" in settings.provisioners:
        pool = SshPoolProvider(
            runtime.db, parse_pool(settings.ssh_pool), prices=parse_prices(settings.ssh_pool_prices)
        )
        providers[pool.name] = pool
    providers.update(cloud_providers(settings))
    driver = ProvisionDriver(
        store,
        providers,
        runtime.clock,
        runtime.notify_outbox,
        offer_order=settings.cloud_order,
        lease_seconds=settings.lease_seconds,
        learned=samples.list_learned,
    )
    handler = ProvisionEventHandler(
        store,
        runtime.clock,
        settings.provisioners,
        driver.wake,
        runtime.notify_outbox,
        driver=driver,
    )
    register(runtime.broker, runtime.ns, handler, ThroughputLearner(store, samples, runtime.clock))

    async def prepare() -> None:
        await store.ensure_indexes()
        await samples.ensure_indexes()
        if pool is not None:
            await pool.sync_pool()

    runtime.add_startup(prepare)
    runtime.add_loop("provision-driver", driver.run)
    rented = {name: p for name, p in providers.items() if p.rents_by_offer}
    if rented:
        reconciler = Reconciler(
            store,
            rented,
            runtime.clock,
            runtime.notify_outbox,
            interval_seconds=settings.reconcile_seconds,
            catalog_interval_seconds=settings.catalog_refresh_seconds,
        )
        runtime.add_loop("reconciler", reconciler.run)
        runtime.add_loop("offers-catalog", reconciler.run_catalog)
    return runtime
