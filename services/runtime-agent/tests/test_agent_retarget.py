"""A batch whose machine was lost moves to the replacement the planner leased."""

from __future__ import annotations

import msgspec

from neobatch.common.contracts import SshEndpoint


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
