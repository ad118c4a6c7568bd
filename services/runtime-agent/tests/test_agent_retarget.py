"""A batch whose machine was lost moves to the replacement the planner leased."""

from __future__ import annotations

import msgspec

from neobatch.common.contracts import BatchStatus, SshEndpoint
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until


async def test_batch_requested_again_with_a_new_provision_moves_the_batch(
    make_harness, agent
) -> None:
    harness = await make_harness()
    first = agent.batch_requested(
        batch_id=agent.new_batch_id(),
        input_file_id=await harness.upload(agent.chat_lines(2)),
        target=SshEndpoint(host="127.0.0.1", port=1, username="gone"),
        engine=agent.sim_engine_spec(),
    )
    await harness.agent.handlers.on_batch_requested(first)
    await harness.db.batches.update_one({"_id": first.batch_id}, {"$set": {"crash_count": 2}})

    replacement = SshEndpoint(
        host="127.0.0.1", port=2, username="new", host_public_key="ssh-ed25519 AAAA"
    )
    moved = msgspec.structs.replace(first, provision_id="prov_replacement_2", target=replacement)
    await harness.agent.handlers.on_batch_requested(moved)
    await harness.agent.handlers.on_batch_requested(moved)  # redelivered: nothing more changes

    doc = await harness.db.batches.find_one({"_id": first.batch_id})
    assert doc["provision_id"] == "prov_replacement_2"
    assert doc["target"]["username"] == "new" and doc["host_public_key"] == "ssh-ed25519 AAAA"
    assert doc["crash_count"] == 0


async def test_a_run_stuck_on_the_lost_machine_stops_and_the_batch_resumes_on_the_new_one(
    make_harness, agent, ssh_host
) -> None:
    # Long enough that, were the stuck run left alone, the test would time out before it ends.
    harness = await make_harness(ssh_ready_timeout_seconds=60.0, lease_seconds=30.0)
    lost = SshEndpoint(host="127.0.0.1", port=free_port(), username="gone")
    first = await harness.submit(agent.chat_lines(20), agent.sim_engine_spec(), target=lost)

    async def connecting() -> bool:
        batch = await harness.store.find_batch(first.batch_id)
        return batch is not None and batch.status is BatchStatus.IN_PROGRESS

    await wait_until(connecting, 15, message="the run trying the lost machine")
    moved = msgspec.structs.replace(
        first, provision_id="prov_replacement_2", target=agent.target_for(ssh_host)
    )
    await harness.agent.handlers.on_batch_requested(moved)

    batch = await harness.wait_terminal(first.batch_id, within_seconds=30)
    assert batch.status is BatchStatus.COMPLETED, (batch.error_code, batch.error_message)
    assert batch.request_counts.completed == 20
    assert batch.provision_id == "prov_replacement_2"
