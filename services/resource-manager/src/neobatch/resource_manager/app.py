"""Composition root of the resource-manager."""

from __future__ import annotations

from neobatch.common.runtime import ServiceRuntime
from neobatch.resource_manager.driver import ProvisionDriver
from neobatch.resource_manager.handlers import SERVICE, ProvisionEventHandler, register
from neobatch.resource_manager.providers.base import CloudProvider, Provider
from neobatch.resource_manager.providers.lambda_cloud import LambdaCloudProvider
from neobatch.resource_manager.providers.runpod import RunPodProvider
from neobatch.resource_manager.providers.ssh_pool import SshPoolProvider, parse_pool
from neobatch.resource_manager.reconciler import Reconciler
from neobatch.resource_manager.settings import ResourceManagerSettings
from neobatch.resource_manager.store import ProvisionStore


def cloud_providers(settings: ResourceManagerSettings) -> dict[str, CloudProvider]:
    clouds: dict[str, CloudProvider] = {}
    if settings.runpod is not None:
        rp = settings.runpod
        clouds["runpod"] = RunPodProvider(
            api_key=rp.api_key,
            ssh_public_key=rp.ssh_public_key,
            base_url=rp.base_url,
            data_centers=rp.data_centers,
            image=rp.image,
            cloud_type=rp.cloud_type,
            retry_budget_seconds=settings.retry_budget_seconds,
        )
    if settings.lambda_cloud is not None:
        lc = settings.lambda_cloud
        clouds["lambdaCloud"] = LambdaCloudProvider(
            api_key=lc.api_key,
            ssh_key_names=lc.ssh_key_names,
            base_url=lc.base_url,
            region=lc.region,
            ssh_port=lc.ssh_port,
            retry_budget_seconds=settings.retry_budget_seconds,
        )
    return clouds


def build(settings: ResourceManagerSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(SERVICE, settings.common)
    store = ProvisionStore(runtime.mongo, runtime.db, runtime.ns)
    providers: dict[str, Provider] = {}
    ssh_pool: SshPoolProvider | None = None
    if "ssh" in settings.provisioners:
        ssh_pool = SshPoolProvider(runtime.db, parse_pool(settings.ssh_pool))
        providers["ssh"] = ssh_pool
    clouds = cloud_providers(settings)
    driver = ProvisionDriver(
        store,
        providers,
        runtime.clock,
        runtime.notify_outbox,
        clouds=clouds,
        cloud_order=settings.cloud_order,
        lease_seconds=settings.lease_seconds,
    )
    handler = ProvisionEventHandler(
        store,
        runtime.clock,
        settings.provisioners,
        driver.wake,
        runtime.notify_outbox,
        driver=driver,
    )
    register(runtime.broker, runtime.ns, handler)

    async def prepare() -> None:
        await store.ensure_indexes()
        if ssh_pool is not None:
            await ssh_pool.sync_pool()

    runtime.add_startup(prepare)
    runtime.add_loop("provision-driver", driver.run)
    if clouds:
        reconciler = Reconciler(
            store,
            clouds,
            runtime.clock,
            runtime.notify_outbox,
            interval_seconds=settings.reconcile_seconds,
            catalog_interval_seconds=settings.catalog_refresh_seconds,
        )
        runtime.add_loop("reconciler", reconciler.run)
        runtime.add_loop("offers-catalog", reconciler.run_catalog)
    return runtime
