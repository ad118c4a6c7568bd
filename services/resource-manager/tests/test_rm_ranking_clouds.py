"""Offer ranking through the resource-manager against the cloud simulators (issue 16).

Both simulators sell an A100 cheaper per hour than an H100 (RunPod $1.64 vs $2.39, Lambda
$1.29 vs $2.49). A template that accepts both and knows their throughput gets the H100.
"""

from __future__ import annotations

from typing import Any

from neobatch.common.contracts import BatchStatus, BatchTerminal, Usage
from neobatch.resource_manager.handlers import ThroughputLearner
from neobatch.resource_manager.offers import gpu_family
from neobatch.sim.pytest_plugin import ProviderSimInfo

STUDY = {"H100": 10300.0, "A100": 2400.0}
BIG_JOB = 10_000_000


async def release_and_confirm(rig: Any, sim: ProviderSimInfo, provision_id: str) -> None:
    await rig.release(provision_id)
    doc = await rig.drive_until(provision_id, {"released"})
    assert all(m["id"] != doc.get("provider_resource_id") for m in sim.live_machines())


async def _chosen(rig: Any, provision_id: str) -> dict[str, Any]:
    """Drive until an offer is recorded (before any create call)."""
    return await rig.drive_until(provision_id, {"creating", "booting", "running", "failed"})


async def test_the_per_hour_cheaper_gpu_loses_on_cost_per_job(
    rig: Any, provider_sim: ProviderSimInfo, provider_name: str
) -> None:
    accepts = {"accelerator_alternatives": ["A100"], "template_key": "tpl_qwen"}
    blind = await rig.request("H100", **accepts, expected_output_tokens=BIG_JOB)
    doc = await _chosen(rig, blind)
    assert gpu_family(doc["offer"]["gpu_description"]) == "A100", "nothing known: per hour"
    assert doc["placement"]["rule"] == "price_per_hour"
    assert doc["placement"]["expected_cost_usd"] is None
    await release_and_confirm(rig, provider_sim, blind)

    known = await rig.request("H100", **accepts, throughput=STUDY, expected_output_tokens=BIG_JOB)
    doc = await _chosen(rig, known)
    assert doc["status"] != "failed", doc.get("error_message")
    assert gpu_family(doc["offer"]["gpu_description"]) == "H100"
    placement = doc["placement"]
    assert placement["rule"] == "cost_per_job"
    assert placement["offer"].startswith(f"{provider_name}:")
    assert placement["throughput_tokens_per_second"] == 10300.0
    assert placement["throughput_source"] == "declared"
    hours = BIG_JOB / 10300 / 3600 + 300 / 3600
    assert placement["expected_cost_usd"] == round(doc["offer"]["price_per_hour"] * hours, 6)
    await release_and_confirm(rig, provider_sim, known)


async def test_a_finished_batch_teaches_the_next_job(
    rig: Any, provider_sim: ProviderSimInfo, provider_name: str
) -> None:
    """The A100 the first job ran on proved 5x faster than declared: the next job takes it."""
    if provider_name != "runpod":
        return  # one provider is enough for the store path
    accepts = {
        "accelerator_alternatives": ["A100"],
        "template_key": "tpl_learn",
        "throughput": STUDY,
        "expected_output_tokens": BIG_JOB,
    }
    first = await rig.request("A100", **{**accepts, "accelerator_alternatives": []})
    doc = await rig.drive_until(first, {"running", "failed"})
    assert doc["status"] == "running", doc.get("error_message")
    learner = ThroughputLearner(rig.store, rig.samples, rig.clock)
    terminal = BatchTerminal(
        batch_id="batch_learn_1",
        job_id=doc["job_id"],
        status=BatchStatus.COMPLETED,
        usage=Usage(output_tokens=1_200_000),
        dispatch_seconds=100.0,  # 12,000 tok/s
    )
    await learner.on_batch_terminal(terminal)
    await learner.on_batch_terminal(terminal)  # a replay teaches nothing twice
    assert await rig.db.throughput_samples.count_documents({}) == 1
    assert await rig.samples.list_learned("tpl_learn", ["A100", "H100"]) == {"A100": 12000.0}
    await release_and_confirm(rig, provider_sim, first)

    second = await rig.request("H100", **accepts)
    doc = await _chosen(rig, second)
    assert gpu_family(doc["offer"]["gpu_description"]) == "A100"
    assert doc["placement"]["rule"] == "cost_per_job"
    assert doc["placement"]["throughput_source"] == "learned"
    assert doc["placement"]["throughput_tokens_per_second"] == 12000.0
    await release_and_confirm(rig, provider_sim, second)
