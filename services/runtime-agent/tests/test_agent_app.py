"""The composed service: events in through JetStream, events out through the outbox relay."""

from __future__ import annotations

import json
import uuid

import nats
import pytest

from neobatch.common import filestore
from neobatch.common.contracts import (
    BatchStatus,
    BatchTerminal,
    decode_event,
    encode_event,
)
from neobatch.common.settings import CommonSettings
from neobatch.common.subjects import Namespace
from neobatch.runtime_agent.app import build_agent
from neobatch.runtime_agent.settings import AgentSettings
from neobatch.sim.testing.waiting import wait_until


@pytest.mark.timeout(120)
async def test_service_consumes_batch_requested_and_publishes_terminal(
    nats_url, mongo_url, mongo_db, ssh_keypair, ssh_host, agent
):
    ns = Namespace(f"t{uuid.uuid4().hex[:12]}")
    settings = AgentSettings(
        common=CommonSettings(
            nats_url=nats_url, mongo_url=mongo_url, db_name=mongo_db.name, namespace=ns.prefix
        ),
        ssh_key_file=str(ssh_keypair.private_key_path),
        lease_seconds=6.0,
        poll_interval_seconds=0.5,
        engine_stop_grace_seconds=3.0,
    )
    service = build_agent(settings)
    await service.store.ensure_indexes()
    await service.runtime.start()
    nc = await nats.connect(nats_url)
    try:

        async def chunks():
            for line in agent.chat_lines(20):
                yield json.dumps(line).encode() + b"\n"

        file_id = filestore.new_file_id()
        await filestore.save_file(
            mongo_db, file_id, "in.jsonl", chunks(), purpose="batch", owner="user-1"
        )
        event = agent.batch_requested(
            batch_id=agent.new_batch_id(),
            input_file_id=file_id,
            target=agent.target_for(ssh_host),
            engine=agent.sim_engine_spec(),
        )
        js = nc.jetstream()
        sub = await js.subscribe(ns.subject(BatchTerminal), ordered_consumer=True)
        for _ in range(2):  # A duplicate delivery must change nothing.
            await js.publish(ns.subject(event), encode_event(event))

        msg = await sub.next_msg(timeout=60)
        terminal = decode_event(msg.data, BatchTerminal)
        assert terminal.batch_id == event.batch_id and terminal.status is BatchStatus.COMPLETED
        assert terminal.request_counts.completed == 20

        async def outbox_sent() -> bool:
            pending = await service.runtime.db["outbox"].count_documents({"published_at": None})
            return pending == 0

        await wait_until(outbox_sent, 10)
        assert await service.runtime.db["batches"].count_documents({"_id": event.batch_id}) == 1
    finally:
        await nc.close()
        await service.runtime.stop()
