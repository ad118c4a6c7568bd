"""Fault switches of the simulators, the reconciler, the catalog cache and the API contract.

After every test the simulator holds no live machine that no live provision owns.
"""

from __future__ import annotations

from typing import Any

import pytest

from neobatch.resource_manager.store import OFFERS
from neobatch.sim.cloud.specs import lambda_doc, runpod_doc
from neobatch.sim.pytest_plugin import ProviderSimInfo


async def no_unowned(rig: Any, sim: ProviderSimInfo) -> None:
    await rig.reconciler.reconcile_once()
    live = {p.provider_resource_id for p in await rig.store.list_live()}
    leaked = [m for m in sim.live_machines() if m["id"] not in live]
    assert leaked == [], f"machines no live provision owns: {leaked}"


async def running(rig: Any, provision_id: str) -> dict[str, Any]:
    doc = await rig.drive_until(provision_id, {"running", "failed"})
    assert doc["status"] == "running", doc.get("error_message")
    return doc


async def test_error_after_create_adopts_the_machine_instead_of_making_a_second(
    rig: Any, provider_sim: ProviderSimInfo
) -> None:
    provider_sim.faults(error_after_create=1)
    provision_id = await rig.request("H100")
    await running(rig, provision_id)
    assert provider_sim.sim.creates == 1
    assert len(provider_sim.live_machines()) == 1
    await no_unowned(rig, provider_sim)


@pytest.mark.parametrize("fault", [{"burst_5xx": 4}, {"storm_429": 6}])
async def test_transient_errors_and_rate_limits_are_retried(
    rig: Any, provider_sim: ProviderSimInfo, fault: dict[str, int]
) -> None:
    provider_sim.faults(**fault)
    provision_id = await rig.request("H100")
    await running(rig, provision_id)
    assert provider_sim.sim.creates == 1
    await no_unowned(rig, provider_sim)


async def test_stuck_boot_fails_at_the_deadline_and_the_release_deletes_it(
    rig: Any, provider_sim: ProviderSimInfo
) -> None:
    provider_sim.faults(stuck_boot=True)
    provision_id = await rig.request("H100", deadline_seconds=20)
    doc = await rig.drive_until(provision_id, {"running", "failed"})
    assert doc["status"] == "failed"
    assert doc["error_code"] == "ProvisionTimeout"
    assert len(provider_sim.live_machines()) == 1
    await rig.release(provision_id)
    await rig.drive_until(provision_id, {"released"})
    assert provider_sim.live_machines() == []


async def test_stuck_boot_machine_of_a_failed_provision_is_reaped_as_an_orphan(
    rig: Any, provider_sim: ProviderSimInfo
) -> None:
    provider_sim.faults(stuck_boot=True)
    provision_id = await rig.request("H100", deadline_seconds=20)
    await rig.drive_until(provision_id, {"failed"})
    report = await rig.reconciler.reconcile_once()
    assert len(report.orphans_terminated) == 1
    await no_unowned(rig, provider_sim)


async def test_machine_deleted_behind_our_back_is_reported_lost(
    rig: Any, provider_sim: ProviderSimInfo
) -> None:
    provision_id = await rig.request("H100")
    doc = await running(rig, provision_id)
    provider_sim.admin("POST", f"/machines/{doc['provider_resource_id']}/delete")
    report = await rig.reconciler.reconcile_once()
    assert report.lost == [provision_id]
    doc = await rig.doc(provision_id)
    assert doc["status"] == "lost"
    assert (await rig.subjects())[-1] == "provision.lost"
    await no_unowned(rig, provider_sim)


async def test_spot_stop_or_unhealthy_machine_is_lost_and_terminated(
    rig: Any, provider_sim: ProviderSimInfo, provider_name: str
) -> None:
    """RunPod EXITED (spot stop), Lambda unhealthy."""
    provision_id = await rig.request("H100")
    doc = await running(rig, provision_id)
    state = "stopped" if provider_name == "runpod" else "unhealthy"
    provider_sim.admin("POST", f"/machines/{doc['provider_resource_id']}/state", {"state": state})
    report = await rig.reconciler.reconcile_once()
    assert report.lost == [provision_id]
    assert "provider status" in (await rig.doc(provision_id))["error_message"]
    await rig.release(provision_id)
    await rig.drive_until(provision_id, {"released"})
    assert provider_sim.live_machines() == []


async def test_reconciler_terminates_orphans_and_keeps_owned_machines(
    rig: Any, provider_sim: ProviderSimInfo
) -> None:
    owned = await rig.request("H100")
    await running(rig, owned)
    # A machine with our prefix that no provision records (e.g. from a lost database).
    orphan = await rig.request("H100")
    await running(rig, orphan)
    await rig.db.provisions.delete_one({"_id": orphan})
    report = await rig.reconciler.reconcile_once()
    assert len(report.orphans_terminated) == 1
    assert len(provider_sim.live_machines()) == 1
    await no_unowned(rig, provider_sim)


async def test_release_retries_until_the_provider_confirms(
    rig: Any, provider_sim: ProviderSimInfo
) -> None:
    provision_id = await rig.request("H100")
    await running(rig, provision_id)
    provider_sim.faults(burst_5xx=12)  # longer than one call's retry budget (1 s here)
    await rig.release(provision_id)
    doc = await rig.drive_until(provision_id, {"released"}, timeout_seconds=60)
    assert doc["status"] == "released"
    assert provider_sim.live_machines() == []


async def test_catalog_cache_holds_live_prices(
    rig: Any, provider_sim: ProviderSimInfo, provider_name: str
) -> None:
    await rig.reconciler.refresh_catalog()
    offers = [doc async for doc in rig.db[OFFERS].find({"provider": provider_name})]
    assert offers and all(o["price_per_hour"] > 0 for o in offers)
    assert any(o["family"] == "H100" for o in offers)
    gpu = "NVIDIA H100 PCIe" if provider_name == "runpod" else "gpu_1x_h100_pcie"
    provider_sim.admin("POST", "/prices", {gpu: 9.99})
    await rig.reconciler.refresh_catalog()
    prices = {
        o["price_per_hour"]
        async for o in rig.db[OFFERS].find({"provider": provider_name, "gpu_type": gpu})
    }
    assert prices == {9.99}


async def test_every_exchange_follows_the_openapi_document(
    rig: Any, provider_sim: ProviderSimInfo, provider_name: str
) -> None:
    """Contract: the provider's requests and the simulator's answers, checked after a full
    cycle with failover, a 500-after-create and a 429 storm."""
    provider_sim.faults(error_after_create=1, storm_429=2)
    provision_id = await rig.request("H100")
    await running(rig, provision_id)
    await rig.release(provision_id)
    await rig.drive_until(provision_id, {"released"})
    doc = runpod_doc() if provider_name == "runpod" else lambda_doc()
    exchanges = provider_sim.sim.exchanges
    assert {e.status for e in exchanges} >= {200, 429, 500}
    for e in exchanges:
        if e.method in ("POST", "PUT", "PATCH"):
            assert doc.request_errors(e.method, e.path, e.request) == [], e
        assert doc.response_errors(e.method, e.path, e.status, e.content_type, e.response) == [], e


async def test_lambda_launch_rate_limit_is_waited_out(
    rig: Any, provider_sim: ProviderSimInfo, provider_name: str
) -> None:
    if provider_name != "lambdaCloud":
        pytest.skip("launch rate limit is Lambda's")
    provider_sim.sim.launch_interval_seconds = 200  # 2 s at the test time factor
    first, second = await rig.request("H100"), await rig.request("H100")
    await running(rig, first)
    await running(rig, second)
    launches = [e for e in provider_sim.sim.exchanges if e.path.endswith("/launch")]
    assert [e.status for e in launches].count(429) >= 1
    assert provider_sim.sim.creates == 2
    await no_unowned(rig, provider_sim)


async def test_unregistered_lambda_key_is_missing_ssh_key(
    rig: Any, provider_sim: ProviderSimInfo, provider_name: str
) -> None:
    if provider_name != "lambdaCloud":
        pytest.skip("Lambda takes registered key names")
    provider_sim.sim.ssh_keys.clear()
    provision_id = await rig.request("H100")
    doc = await rig.drive_until(provision_id, {"running", "failed"})
    assert doc["error_code"] == "MissingSSHKey"
    assert provider_sim.sim.creates == 0
