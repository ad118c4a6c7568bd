"""ServiceRuntime's /healthz, /readyz and /metrics against a real nats-server and Mongo-wire server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.broker import subscribe
from neobatch.common.clock import utcnow
from neobatch.common.contracts import JobQueued
from neobatch.common.healthcheck import main as healthcheck
from neobatch.common.runtime import ServiceRuntime
from neobatch.common.settings import CommonSettings
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def settings(nats_url: str, mongo_url: str, mongo_db: AsyncDatabase) -> CommonSettings:
    return CommonSettings(
        nats_url=nats_url,
        mongo_url=mongo_url,
        db_name=mongo_db.name,
        namespace=f"t{uuid.uuid4().hex[:10]}",
        health_port=free_port(),
        metrics_cache_seconds=0,
    )


async def test_probes_and_metrics_of_a_running_runtime(
    settings: CommonSettings, mongo_db: AsyncDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    await mongo_db["jobs"].insert_many(
        [{"_id": f"job_{i}", "status": "completed"} for i in range(3)]
        + [{"_id": "job_q", "status": "queued"}]
        + [{"_id": "job_b", "status": "completed", "project": "acme"}]
    )
    await mongo_db["provisions"].insert_many(
        [
            {
                "_id": "prov_1",
                "provider": "ssh",
                "status": "running",
                "created_at": now - timedelta(seconds=4),
                "running_at": now,
            },
            {"_id": "prov_2", "provider": "ssh", "status": "released", "created_at": now},
        ]
        + [  # billed: Lambda per started minute, RunPod per started second
            {
                "_id": f"prov_b{i}",
                "job_id": "job_b",
                "provider": provider,
                "status": "released",
                "created_at": now,
                "leased_at": now - timedelta(seconds=100),
                "running_at": now - timedelta(seconds=100),
                "released_at": now - timedelta(seconds=100 - elapsed),
                "lease": {"provider": provider, "gpu_type": "H100", "price_per_hour": price},
            }
            for i, (provider, elapsed, price) in enumerate(
                [("lambdaCloud", 61, 2.4), ("runpod", 10.2, 3.6), ("runpod", 5, 3.6)]
            )
        ]
    )
    # An entry nobody publishes (its subject is outside any stream) shows as outbox lag.
    await mongo_db["outbox"].insert_one(
        {"_id": "evt_stuck", "published_at": None, "created_at": now - timedelta(seconds=30),
         "lease_until": now + timedelta(hours=1), "lease_owner": "someone-else"}
    )  # fmt: skip

    runtime = ServiceRuntime("test-svc", settings)
    failures = {"left": 1}

    async def flaky(_event: JobQueued) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("first delivery fails")

    subscribe(runtime.broker, runtime.ns, "test-svc", JobQueued, flaky)
    base = f"http://127.0.0.1:{settings.health_port}"
    assert not (await runtime.readiness())["started"]
    await runtime.start()
    try:
        async with httpx.AsyncClient(base_url=base, trust_env=False) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {
                "started": True,
                "nats": True,
                "mongo": True,
                "consumers": True,
            }
            monkeypatch.setenv("NEOBATCH_HEALTH_PORT", str(settings.health_port))
            # The container HEALTHCHECK command; in a thread, as this loop serves the request.
            assert await asyncio.to_thread(healthcheck, ["/readyz"]) == 0

            await runtime.broker.publish(
                JobQueued(job_id="job_x"),
                runtime.ns.subject(JobQueued),
                stream=runtime.ns.stream_name,
            )
            retried = (
                "neobatch_handler_retries_total",
                (("service", "test-svc"), ("subject", "job.queued")),
            )
            handled = ("neobatch_events_handled_total", retried[1])

            async def handled_once() -> bool:
                text = (await http.get("/metrics")).text
                return samples(text).get(handled) == 1.0

            await wait_until(handled_once, 20, interval=0.1, message="event handled after a retry")
            response = await http.get("/metrics")
            assert response.headers["content-type"].startswith("text/plain")
            got = samples(response.text)
    finally:
        await runtime.stop()

    assert got[retried] == 1.0
    assert got[("neobatch_jobs", (("status", "completed"),))] == 4
    assert got[("neobatch_jobs", (("status", "queued"),))] == 1
    assert got[("neobatch_provisions", (("provider", "ssh"), ("status", "running")))] == 1
    assert got[("neobatch_leased_machines", (("provider", "ssh"),))] == 1
    assert got[("neobatch_provisioning_seconds_count", (("provider", "ssh"),))] == 1
    assert got[("neobatch_provisioning_seconds_sum", (("provider", "ssh"),))] == 4
    assert got[("neobatch_provisioning_seconds_bucket", (("le", "1.0"), ("provider", "ssh")))] == 0
    assert got[("neobatch_provisioning_seconds_bucket", (("le", "5.0"), ("provider", "ssh")))] == 1
    acme = (("gpu_type", "H100"), ("project", "acme"))
    lambda_billed = (*acme[:1], ("project", "acme"), ("provider", "lambdaCloud"))
    runpod_billed = (*acme[:1], ("project", "acme"), ("provider", "runpod"))
    assert got[("neobatch_billed_machine_seconds_total", lambda_billed)] == 120
    assert got[("neobatch_billed_usd_total", lambda_billed)] == 0.08
    assert got[("neobatch_billed_machine_seconds_total", runpod_billed)] == 16
    assert got[("neobatch_billed_usd_total", runpod_billed)] == pytest.approx(0.016)
    assert got[("neobatch_outbox_pending", ())] == 1
    assert got[("neobatch_outbox_lag_seconds", ())] >= 30
    assert got[("neobatch_state_up", (("source", "mongo"),))] == 1
    assert got[("neobatch_state_up", (("source", "nats"),))] == 1
    consumer = (("consumer", "test-svc-job_queued"),)
    assert got[("neobatch_consumer_pending", consumer)] == 0
    assert ("neobatch_consumer_redelivered", consumer) in got
    # Stopped: the health server is gone with the runtime.
    assert healthcheck(["/healthz", "--timeout", "1"]) == 1


async def test_readiness_fails_when_mongo_does_not_answer(nats_url: str) -> None:
    settings = CommonSettings(
        nats_url=nats_url, mongo_url="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=500"
    )
    runtime = ServiceRuntime("test-svc", settings)
    try:
        checks = await runtime.readiness()
        assert checks == {"started": False, "nats": False, "mongo": False, "consumers": False}
        # A scrape still answers, and says which source it could not read.
        text = (await runtime.render_metrics()).decode()
        assert samples(text)[("neobatch_state_up", (("source", "mongo"),))] == 0
    finally:
        await runtime.mongo.close()


def test_healthcheck_needs_a_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEOBATCH_HEALTH_PORT", raising=False)
    assert healthcheck([]) == 1
