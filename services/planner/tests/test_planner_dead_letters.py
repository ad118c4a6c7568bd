"""An event the planner could not handle after every retry fails its job (DESIGN rule 2),
through the real service wiring: nats-server, the dead-letter stream and the database."""

from __future__ import annotations

import uuid

import nats
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.clock import utcnow
from neobatch.common.contracts import ProvisionRunning, SshEndpoint, encode_event
from neobatch.common.settings import CommonSettings
from neobatch.planner.app import build
from neobatch.planner.settings import PlannerSettings
from neobatch.sim.testing.waiting import wait_until


async def test_dead_lettered_event_fails_the_job_with_the_reason(
    nats_url: str, mongo_url: str, mongo_db: AsyncDatabase
) -> None:
    namespace = f"t{uuid.uuid4().hex[:8]}"
    settings = PlannerSettings(
        common=CommonSettings(
            nats_url=nats_url, mongo_url=mongo_url, db_name=mongo_db.name, namespace=namespace
        )
    )
    runtime = build(settings)
    await runtime.start()
    try:
        await mongo_db.jobs.insert_one(
            {
                "_id": "job_dl",
                "batch_id": "batch_dl",
                "status": "resource_preparing",
                "version": 3,
                "provision_id": "prov_dl_1",
                "created_at": utcnow(),
            }
        )
        poison = ProvisionRunning(
            provision_id="prov_dl_1",
            job_id="job_dl",
            provider="ssh",
            endpoint=SshEndpoint(host="127.0.0.1", port=22, username="u"),
        )
        nc = await nats.connect(nats_url)
        # What the dead-letter forwarder publishes once a planner consumer gave up on a message.
        await nc.jetstream().publish(
            f"dlq.{namespace}.provision.running",
            encode_event(poison),
            headers={
                "Nats-Msg-Id": "dlq-test-1",
                "X-Consumer": "planner-provision_running",
                "X-Original-Subject": f"{namespace}.provision.running",
            },
        )
        await nc.close()

        async def failed() -> dict | None:
            doc = await mongo_db.jobs.find_one({"_id": "job_dl", "status": "failed"})
            return doc

        job = await wait_until(failed, 15, message="job failed by the dead letter")
        assert job["error_code"] == "event_dead_lettered"
        assert "provision.running" in job["error_message"]
        released = await mongo_db.outbox.count_documents(
            {"subject": f"{namespace}.provision.release_requested"}
        )
        assert released == 1
    finally:
        await runtime.stop()
