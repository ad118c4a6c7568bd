"""The event feed's NATS permissions as shipped in deploy/: a real nats-server runs the
`authorization` block of the k8s ConfigMap and of compose, and the `integration` user reads
`job.status_changed` through its durable and can do nothing else (docs/events.md)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio

from neobatch.common.broker import ensure_stream
from neobatch.common.contracts import JobQueued, JobStatusChanged, ProvisionFailed
from neobatch.common.subjects import Namespace
from neobatch.sim.testing.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "subscriber.py"
NS = Namespace()
INBOX = "_INBOX_integration"


def normalized(block: str) -> str:
    lines = (line.split("#")[0].strip() for line in block.splitlines())
    return "\n".join(line for line in lines if line)


def test_k8s_and_compose_ship_the_same_permissions(shipped_nats: Any) -> None:
    blocks = shipped_nats.blocks()
    assert normalized(blocks["k8s"]) == normalized(blocks["compose"])


@pytest.fixture(scope="module", params=["k8s", "compose"])
def server(request: pytest.FixtureRequest, shipped_nats: Any) -> int:
    """A single JetStream server with the shipped authorization block; its port."""
    return shipped_nats(request.param)


@pytest_asyncio.fixture
async def services(server: int, shipped_nats: Any) -> AsyncIterator[nats.NATS]:
    """The services' login: the stream, one event of each kind, and the integration's durable
    made by the example's --create-consumer (as an operator would)."""
    nc = await nats.connect(shipped_nats.services_url(server))
    js = nc.jetstream()
    await ensure_stream(nc, NS)
    await js.purge_stream(NS.stream_name)
    for event in (
        JobQueued(job_id="job_a"),
        JobStatusChanged(job_id="job_a", old_status=None, new_status="queued", job_version=1),
        ProvisionFailed(provision_id="prov_a", job_id="job_a", code="x", reason="y"),
    ):
        await js.publish(NS.subject(event), json.dumps({"job_id": event.job_id}).encode())
    # A service's own durable, which the integration must not be able to read from.
    await js.add_consumer(NS.stream_name, durable_name="planner-job_queued",
                          filter_subject=NS.subject(JobQueued))  # fmt: skip
    created = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--url", shipped_nats.services_url(server), "--create-consumer",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(created.communicate(), 60)
    assert created.returncode == 0, stderr.decode()
    yield nc
    await js.delete_consumer(NS.stream_name, "integration")
    await js.delete_consumer(NS.stream_name, "planner-job_queued")
    await nc.close()


async def integration(url: str, errors: list[str]) -> nats.NATS:
    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    return await nats.connect(url, inbox_prefix=INBOX, error_cb=on_error, allow_reconnect=False)


async def test_integration_reads_the_public_feed_through_its_durable(
    server: int, services: nats.NATS, shipped_nats: Any
) -> None:
    errors: list[str] = []
    nc = await integration(shipped_nats.integration_url(server), errors)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe_bind("integration", stream=NS.stream_name)
        msgs = await sub.fetch(10, timeout=5)
        assert [m.subject for m in msgs] == [NS.subject(JobStatusChanged)]
        await msgs[0].ack_sync()
        info = await js.consumer_info(NS.stream_name, "integration")
        assert info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        await nc.close()
    assert errors == []


async def test_integration_can_neither_publish_nor_read_anything_else(
    server: int, services: nats.NATS, shipped_nats: Any
) -> None:
    errors: list[str] = []
    nc = await integration(shipped_nats.integration_url(server), errors)
    js_admin = services.jetstream()
    try:
        # Publishing, even onto the public subject: refused, nothing reaches the stream.
        before = (await js_admin.stream_info(NS.stream_name)).state.messages
        await nc.publish(NS.subject(JobStatusChanged), b'{"job_id": "forged"}')
        await nc.publish(NS.subject(JobQueued), b'{"job_id": "forged"}')
        await nc.flush()
        await wait_until(lambda: len(errors) >= 2, 10, message="two publish violations")
        assert all("permissions violation for publish" in e for e in errors), errors
        assert (await js_admin.stream_info(NS.stream_name)).state.messages == before

        # Reading other subjects, the services' inboxes or the events directly: refused.
        for subject in ("neobatch.>", NS.subject(JobQueued), "_INBOX.>", "$JS.>"):
            errors.clear()
            await nc.subscribe(subject)
            await nc.flush()
            await wait_until(lambda: errors, 10, message=f"violation for {subject}")
            assert "permissions violation for subscription" in errors[0], errors

        # The JetStream API beyond its own durable: no answer at all (the request is dropped).
        js = nc.jetstream(timeout=1.5)
        with pytest.raises(nats.errors.TimeoutError):
            await js.consumer_info(NS.stream_name, "planner-job_queued")
        with pytest.raises(nats.errors.TimeoutError):
            await js.stream_info(NS.stream_name)
        with pytest.raises(nats.errors.TimeoutError):  # a consumer of its own making
            await js.add_consumer(NS.stream_name, durable_name="mine", filter_subject="neobatch.>")
        stolen = await js.pull_subscribe_bind("planner-job_queued", stream=NS.stream_name)
        with pytest.raises(nats.errors.TimeoutError):
            await stolen.fetch(1, timeout=1.5)
        # The service's message is still there for the service.
        info = await js_admin.consumer_info(NS.stream_name, "planner-job_queued")
        assert info.num_pending == 1 and info.num_ack_pending == 0
        await asyncio.sleep(0)  # let the last error callbacks run before the connection closes
    finally:
        await nc.close()
