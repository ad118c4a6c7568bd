"""The bench's input lines and the load generators it compares the agent with."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from neobatch.sim.bench.dispatch.nginx import CHAT, MODEL

if TYPE_CHECKING:
    from neobatch.sim.bench.dispatch.rig import BenchRig


def request_line(index: int, pad: int = 0) -> bytes:
    """One input line; `pad` characters of filler make a large file of realistic lines."""
    content = f"Request {index}: explain batch inference in one sentence."
    if pad:
        content += " " + ("lorem ipsum " * (pad // 12 + 1))[:pad]
    line = {
        "custom_id": f"req-{index}",
        "method": "POST",
        "url": CHAT,
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 16,
        },
    }
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


async def upload_input(db: Any, requests: int, pad: int) -> tuple[str, int]:
    """Stream `requests` lines into GridFS; returns (file id, bytes)."""
    from neobatch.common import filestore

    size = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal size
        buf = bytearray()
        for i in range(requests):
            buf += request_line(i, pad)
            if len(buf) >= 1 << 20:
                size += len(buf)
                yield bytes(buf)
                buf.clear()
        if buf:
            size += len(buf)
            yield bytes(buf)

    file_id = filestore.new_file_id()
    await filestore.save_file(db, file_id, "bench.jsonl", chunks(), purpose="batch", owner="bench")
    return file_id, size


async def upload_to(mongo_url: str, db_name: str, requests: int, pad: int) -> tuple[str, int]:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        return await upload_input(client[db_name], requests, pad)
    finally:
        await client.close()


@dataclass(frozen=True)
class Rate:
    rps: float
    # CPU of the client side per request, in ms: steadier than the rate on a shared machine.
    cpu_ms: float


def request_bodies(requests: int, pad: int = 0) -> list[bytes]:
    """The request bodies of the input lines, as a load generator sends them."""
    return [
        json.dumps(json.loads(request_line(i, pad))["body"], separators=(",", ":")).encode()
        for i in range(requests)
    ]


async def timed_workers(
    worker: Callable[[], Awaitable[None]], requests: int, concurrency: int
) -> Rate:
    """Run `concurrency` copies of `worker` (each sending until the requests run out)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return Rate(requests / elapsed, cpu / requests * 1e3)


async def direct_rate(base_url: str, requests: int, concurrency: int, pad: int = 0) -> Rate:
    """Requests per second of a minimal aiohttp generator sending the same requests."""
    import aiohttp

    bodies = request_bodies(requests, pad)
    headers = {"Content-Type": "application/json"}
    next_index = 0
    failures = 0
    url = base_url + CHAT
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal next_index, failures
            while next_index < requests:
                body = bodies[next_index]
                next_index += 1
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures += 1

        rate = await timed_workers(worker, requests, concurrency)
    if failures:
        raise RuntimeError(f"direct: {failures} requests failed")
    return rate


async def engine_client_rate(base_url: str, requests: int, concurrency: int) -> Rate:
    """For scale: the same requests straight to nginx with the agent's HTTP client alone."""
    from neobatch.runtime_agent.engine.http import EngineHTTP

    bodies = request_bodies(requests)
    http = EngineHTTP(base_url, max_connections=concurrency)
    headers = (("Content-Type", "application/json"),)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests:
            body = bodies[next_index]
            next_index += 1
            resp = await http.request("POST", CHAT, body=body, headers=headers, timeout_seconds=60)
            if resp.status != 200:
                raise RuntimeError(f"engine client: HTTP {resp.status}")

    try:
        return await timed_workers(worker, requests, concurrency)
    finally:
        await http.close()


async def tunnel_rate(rig: BenchRig, engine_port: int, requests: int, concurrency: int) -> Rate:
    """The agent's HTTP client through the agent's own SSH tunnel alone (no agent around it)."""
    import getpass

    from neobatch.common.contracts import SshEndpoint
    from neobatch.runtime_agent.machine import remote

    target = SshEndpoint(host="127.0.0.1", port=rig.ssh_port, username=getpass.getuser())
    key = remote.load_client_key(str(rig.key_file))
    # The agent's default data path: OpenSSH's `ssh -L` to a unix socket when `ssh` is installed.
    host = await remote.connect(target, key, None, connect_timeout_seconds=10)
    try:
        base_url = await host.forward(engine_port)
        return await engine_client_rate(base_url, requests, concurrency)
    finally:
        await host.close()
