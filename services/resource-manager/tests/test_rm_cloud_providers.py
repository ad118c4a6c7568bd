"""Cloud providers against their simulators: create, ready over real SSH, release, failover.

Every test runs on RunPod and on Lambda Cloud (``provider_name``), and ends with the simulator
holding no live machine that no live provision owns.
"""

from __future__ import annotations

from typing import Any

import asyncssh
import pytest

from neobatch.common.errors import ConfigError
from neobatch.resource_manager.settings import read_settings
from neobatch.sim.pytest_plugin import ProviderSimInfo, SSHKeyPair

CHEAPEST_H100 = {"runpod": "NVIDIA H100 PCIe", "lambdaCloud": "gpu_1x_h100_pcie"}


async def assert_no_unowned(rig: Any, sim: ProviderSimInfo) -> None:
    live = {p.provider_resource_id for p in await rig.store.list_live()}
    leaked = [m for m in sim.live_machines() if m["id"] not in live]
    assert leaked == [], f"machines no live provision owns: {leaked}"


async def release_and_confirm(rig: Any, sim: ProviderSimInfo, provision_id: str) -> None:
    await rig.release(provision_id)
    doc = await rig.drive_until(provision_id, {"released"})
    assert doc["status"] == "released"
    assert all(m["id"] != doc.get("provider_resource_id") for m in sim.live_machines())
    await assert_no_unowned(rig, sim)


async def test_provision_runs_on_a_reachable_ssh_host_and_release_deletes_it(
    rig: Any, provider_sim: ProviderSimInfo, provider_name: str, ssh_keypair: SSHKeyPair
) -> None:
    provision_id = await rig.request("H100")
    doc = await rig.drive_until(provision_id, {"running", "failed"})
    assert doc["status"] == "running", doc.get("error_message")
    assert doc["offer"]["gpu_type"] == CHEAPEST_H100[provider_name]
    assert doc["provider"] == provider_name
    endpoint = doc["endpoint"]
    assert endpoint["username"] == ("root" if provider_name == "runpod" else "ubuntu")
    # The machine is a real SSH host that accepts the key we injected.
    async with asyncssh.connect(
        endpoint["host"],
        endpoint["port"],
        username=endpoint["username"],
        client_keys=[str(ssh_keypair.private_key_path)],
        known_hosts=None,
    ) as conn:
        result = await conn.run("echo hello-from-the-machine", check=True)
    assert str(result.stdout).strip() == "hello-from-the-machine"
    assert len(provider_sim.live_machines()) == 1
    assert (await rig.subjects()) == ["provision.running"]
    await release_and_confirm(rig, provider_sim, provision_id)
    assert (await rig.subjects())[-1] == "provision.released"


async def test_first_offer_refused_fails_over_to_the_next(
    rig: Any, provider_sim: ProviderSimInfo, provider_name: str
) -> None:
    """Capacity listed, launch refused: the next offer (another region here) is tried."""
    cheapest = CHEAPEST_H100[provider_name]
    first_region = sorted(_regions(provider_name))[0]
    provider_sim.faults(refuse_launch=[f"{cheapest}@{first_region}"])
    provision_id = await rig.request("H100")
    doc = await rig.drive_until(provision_id, {"running", "failed"})
    assert doc["status"] == "running", doc.get("error_message")
    assert doc["attempts"] == [
        {
            "offer": f"{provider_name}:{cheapest}@{first_region}",
            "error": doc["attempts"][0]["error"],
        }
    ]
    assert "no capacity" in doc["attempts"][0]["error"]
    assert doc["offer"]["region"] != first_region
    assert len(provider_sim.live_machines()) == 1
    await release_and_confirm(rig, provider_sim, provision_id)


async def test_no_capacity_anywhere_fails_listing_every_attempt(
    rig: Any, provider_sim: ProviderSimInfo, provider_name: str
) -> None:
    provider_sim.faults(refuse_launch=["*"])
    provision_id = await rig.request("H100")
    doc = await rig.drive_until(provision_id, {"running", "failed"})
    assert doc["status"] == "failed"
    assert doc["error_code"] == "NoCapacity"
    assert len(doc["attempts"]) >= 2
    for attempt in doc["attempts"]:
        assert attempt["offer"] in doc["error_message"]
    assert provider_sim.live_machines() == []
    assert (await rig.subjects()) == ["provision.failed"]
    await release_and_confirm(rig, provider_sim, provision_id)


async def test_listed_nowhere_fails_without_creating(
    rig: Any, provider_sim: ProviderSimInfo
) -> None:
    provider_sim.faults(no_capacity=True)
    provision_id = await rig.request("H100")
    doc = await rig.drive_until(provision_id, {"running", "failed"})
    assert doc["error_code"] == "NoCapacity"
    assert doc.get("attempts", []) == []
    assert provider_sim.sim.creates == 0


async def test_unknown_gpu_family_is_no_gpu_type(rig: Any, provider_sim: ProviderSimInfo) -> None:
    provision_id = await rig.request("TPU-v5")
    doc = await rig.drive_until(provision_id, {"running", "failed"})
    assert doc["error_code"] == "NoGpuType"
    assert provider_sim.sim.creates == 0


async def test_a10_never_lands_on_a100(rig: Any, provider_name: str) -> None:
    if provider_name != "lambdaCloud":
        pytest.skip("the RunPod simulator sells no A10")
    provision_id = await rig.request("NVIDIA A10")
    doc = await rig.drive_until(provision_id, {"running", "failed"})
    assert doc["offer"]["gpu_type"] == "gpu_1x_a10"
    await rig.release(provision_id)
    await rig.drive_until(provision_id, {"released"})


def _regions(provider_name: str) -> list[str]:
    if provider_name == "runpod":
        from neobatch.sim.runpod.server import DATA_CENTERS

        return list(DATA_CENTERS)
    from neobatch.sim.lambda_cloud.server import REGIONS

    return list(REGIONS)


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"PROVISIONER": "runpod", "RUNPOD_SSH_PUBLIC_KEY": "ssh-ed25519 AAA"}, "RUNPOD_API_KEY"),
        ({"PROVISIONER": "runpod", "RUNPOD_API_KEY": "k"}, "RUNPOD_SSH_PUBLIC_KEY"),
        ({"PROVISIONER": "lambdaCloud", "LAMBDA_CLOUD_SSH_KEYS": "k"}, "LAMBDA_CLOUD_API_KEY"),
        ({"PROVISIONER": "runpod,lambdaCloud", "RUNPOD_API_KEY": "k",
          "RUNPOD_SSH_PUBLIC_KEY": "p", "LAMBDA_CLOUD_API_KEY": "k"}, "LAMBDA_CLOUD_SSH_KEYS"),
    ],
)  # fmt: skip
def test_a_missing_credential_stops_start_up(env: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError, match=f"resource manager init: missing credential {missing}$"):
        read_settings(env)


def test_provider_list_is_ordered() -> None:
    settings = read_settings(
        {
            "PROVISIONER": "lambdaCloud, runpod",
            "RUNPOD_API_KEY": "k",
            "RUNPOD_SSH_PUBLIC_KEY": "p",
            "LAMBDA_CLOUD_API_KEY": "k",
            "LAMBDA_CLOUD_SSH_KEYS": "a,b",
        }
    )
    assert settings.cloud_order == ("lambdaCloud", "runpod")
    assert settings.lambda_cloud is not None
    assert settings.lambda_cloud.ssh_key_names == ("a", "b")


async def test_each_machine_of_a_job_takes_the_cheapest_offer_left_at_that_moment(
    rig: Any, provider_sim: ProviderSimInfo, provider_name: str
) -> None:
    """Issue 15: a job's provisions are leased one by one, each on its own: the second machine
    of a job whose cheapest offer had room for one takes the cheapest offer left."""
    cheapest = CHEAPEST_H100[provider_name]
    first_region = sorted(_regions(provider_name))[0]
    provider_sim.admin("POST", "/capacity", {"gpu": cheapest, "region": first_region, "free": 1})
    docs = []
    for _ in range(2):
        provision_id = await rig.request("H100", job_id="job_wide")
        doc = await rig.drive_until(provision_id, {"running", "failed"})
        assert doc["status"] == "running", doc.get("error_message")
        docs.append(doc)
    first, second = docs
    assert (first["offer"]["gpu_type"], first["offer"]["region"]) == (cheapest, first_region)
    assert (second["offer"]["gpu_type"], second["offer"]["region"]) != (cheapest, first_region)
    assert second["offer"]["price_per_hour"] >= first["offer"]["price_per_hour"]
    assert len(provider_sim.live_machines()) == 2
    for doc in docs:
        await release_and_confirm(rig, provider_sim, doc["_id"])
