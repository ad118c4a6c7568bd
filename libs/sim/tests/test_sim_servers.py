"""Process helpers and the backing-server fixtures (nats_url, mongo_url, mongo_db)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import aiohttp
import nats
import pytest

from neobatch.sim.engine import expected_body
from neobatch.sim.procs import is_running
from neobatch.sim.testing import servers
from neobatch.sim.testing.waiting import wait_until


def test_free_port_is_bindable_and_wait_port_names_it() -> None:
    port = servers.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    with pytest.raises(TimeoutError, match=str(port)):
        servers.wait_port("127.0.0.1", port, 0.2)


async def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    process = servers.ManagedProcess(
        ["/bin/sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], tmp_path / "sh.log"
    )
    await wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 10)
    grandchild = int(pid_file.read_text())
    assert process.alive()
    process.stop(timeout_seconds=5)
    assert not process.alive()
    # The orphaned grandchild is reparented to init, which reaps it once killed.
    await wait_until(lambda: not is_running(grandchild), 10, message="grandchild to be killed")


async def test_process_that_exits_early_fails_fast(tmp_path: Path) -> None:
    process = servers.ManagedProcess(["/bin/sh", "-c", "echo boom; exit 4"], tmp_path / "x.log")
    with pytest.raises(RuntimeError, match="exited with code 4"):
        servers.wait_port("127.0.0.1", servers.free_port(), 30, process=process)
    assert "boom" in (tmp_path / "x.log").read_text()


async def test_engine_cli_as_subprocess(tmp_path: Path) -> None:
    port = servers.free_port()
    args = ["--port", str(port), "--model", "cli-model", "--startup-delay-seconds", "0.3"]
    process = servers.start_python_module("neobatch.sim.engine", args, log_path=tmp_path / "e.log")
    try:
        await asyncio.to_thread(servers.wait_port, "127.0.0.1", port, 20, process)
        url = f"http://127.0.0.1:{port}"
        body = {"model": "cli-model", "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                async with session.get(url + "/health") as response:
                    return response.status == 200

            await wait_until(healthy, 10, message="engine subprocess health")
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                assert response.status == 200
                assert await response.json() == expected_body("/v1/chat/completions", body)
    finally:
        assert process.stop() == 0  # SIGTERM is a clean shutdown


async def test_nats_jetstream_round_trip(nats_url: str) -> None:
    stream = f"SIMTEST_{uuid.uuid4().hex[:8].upper()}"
    subject = f"{stream.lower()}.events"
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        ack = await js.publish(subject, b"hello", headers={"Nats-Msg-Id": "m1"})
        assert ack.stream == stream
        subscription = await js.pull_subscribe(subject, durable="reader", stream=stream)
        [message] = await subscription.fetch(1, timeout=5)
        assert message.data == b"hello"
        await message.ack()
        await js.delete_stream(stream)
    finally:
        await nc.close()


async def test_mongo_db_insert_and_find(mongo_db) -> None:
    assert mongo_db.name.startswith("test_")
    await mongo_db.jobs.insert_one({"_id": "job-1", "status": "PENDING"})
    assert await mongo_db.jobs.find_one({"_id": "job-1"}) == {"_id": "job-1", "status": "PENDING"}


async def test_mongo_db_is_fresh_per_test(mongo_db) -> None:
    assert await mongo_db.jobs.count_documents({}) == 0
