"""The engine HTTP client's response cap, against a loopback server that answers 50 MB.

Each attack is one way an engine can make a response huge: a `Content-Length` over the cap
(refused before its body is read), a chunked body and a body delimited by the connection's
close (both cut off at the cap), headers without end. The client must raise
`EngineResponseTooLarge` quickly, close the connection (the server's writes stop well short
of the body) and keep working for the next request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from neobatch.runtime_agent.engine.http import EngineHTTP
from neobatch.runtime_agent.engine.limits import MAX_HEAD_BYTES, EngineResponseTooLarge
from neobatch.sim.testing.http_wire import read_request

CAP = 64 * 1024
HUGE = 50 * 1024 * 1024
PIECE = b"x" * (256 * 1024)

Writer = Callable[[asyncio.StreamWriter, bytes], Awaitable[None]]


class HugeServer:
    """Answers each request with what `write` sends; counts the bytes the kernel accepted."""

    def __init__(self, write: Writer) -> None:
        self.write = write
        self.sent = 0
        self.closed_early = asyncio.Event()
        self.connections = 0

    async def body(self, writer: asyncio.StreamWriter, size: int, *, chunked: bool) -> None:
        """`size` bytes of JSON-ish body, stopping when the client hangs up."""
        left = size
        try:
            while left > 0:
                piece = PIECE[: min(left, len(PIECE))]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await writer.drain()
                self.sent += len(piece)
                left -= len(piece)
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except ConnectionError:
            self.closed_early.set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                _head, body = request
                await self.write(writer, body)
                if writer.is_closing():
                    return
        finally:
            writer.close()


@asynccontextmanager
async def serving(server: HugeServer) -> AsyncIterator[str]:
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    async with listener:
        yield f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"


def small_or_huge(server: HugeServer, *, chunked: bool = False, close: bool = False) -> Writer:
    """`"small"` gets a short JSON answer; anything else a 50 MB one, framed as asked."""

    async def write(writer: asyncio.StreamWriter, body: bytes) -> None:
        if body == b'"small"':
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n" + b'"small"')
            await writer.drain()
            return
        if chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif close:
            framing = b"Connection: close\r\n"
        else:
            framing = b"Content-Length: %d\r\n" % HUGE
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + framing + b"\r\n")
        await server.body(writer, HUGE, chunked=chunked)
        if close:
            writer.close()

    return write


@pytest.mark.parametrize("framing", ["content-length", "chunked", "until-close"])
async def test_an_oversize_body_is_refused_without_reading_it(framing: str) -> None:
    server = HugeServer(lambda w, b: asyncio.sleep(0))
    server.write = small_or_huge(
        server, chunked=framing == "chunked", close=framing == "until-close"
    )
    async with serving(server) as base:
        http = EngineHTTP(base, max_connections=1, max_body_bytes=CAP)
        with pytest.raises(EngineResponseTooLarge) as refused:
            await http.request("POST", "/v1/chat/completions", body=b"{}", timeout_seconds=10)
        assert refused.value.status == 200
        assert f"{CAP}-byte limit" in str(refused.value)
        # The client hung up: the server's writes fail long before 50 MB went out.
        await asyncio.wait_for(server.closed_early.wait(), 10)
        assert server.sent < HUGE // 4
        # The next request works, on a fresh connection (the refused one was closed).
        again = await http.request("POST", "/x", body=b'"small"', timeout_seconds=5)
        assert again.body == b'"small"'
        assert server.connections == 2
        await http.close()


async def test_a_body_at_the_cap_is_kept_whole() -> None:
    exact = b'"' + b"y" * (CAP - 2) + b'"'

    async def write(writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(exact), 1000):
            part = exact[start : start + 1000]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with serving(HugeServer(write)) as base:
        http = EngineHTTP(base, max_connections=1, max_body_bytes=CAP)
        resp = await http.request("POST", "/x", body=b"{}", timeout_seconds=5)
        await http.close()
    assert resp.body == exact


async def test_endless_headers_are_refused() -> None:
    server = HugeServer(lambda w, b: asyncio.sleep(0))

    async def write(writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        try:
            for n in range(100_000):
                writer.write(b"X-Pad-%d: %s\r\n" % (n, b"h" * 1000))
                await writer.drain()
                server.sent += 1000
        except ConnectionError:
            server.closed_early.set()

    server.write = write
    async with serving(server) as base:
        http = EngineHTTP(base, max_connections=1, max_body_bytes=CAP)
        with pytest.raises(EngineResponseTooLarge, match="headers"):
            await http.request("POST", "/x", body=b"{}", timeout_seconds=10)
        await asyncio.wait_for(server.closed_early.wait(), 10)
        await http.close()
    assert server.sent < 100 * MAX_HEAD_BYTES


async def test_many_large_bodies_at_once_all_arrive_whole() -> None:
    """Past SMALL_BODY_BYTES responses take turns (LARGE_READS at a time): none is lost or
    stuck, and every place is given back."""
    from neobatch.runtime_agent.engine.limits import SMALL_BODY_BYTES

    size = SMALL_BODY_BYTES * 3
    body = b'"' + b"z" * (size - 2) + b'"'

    async def write(writer: asyncio.StreamWriter, _: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, size, 64 * 1024):
            part = body[start : start + 64 * 1024]
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with serving(HugeServer(write)) as base:
        http = EngineHTTP(base, max_connections=24, max_body_bytes=size)
        answers = await asyncio.gather(
            *(http.request("POST", "/x", body=b"{}", timeout_seconds=30) for _ in range(24))
        )
        assert all(a.body == body for a in answers)
        assert not http._large_reads.holders and not http._large_reads.waiting
        await http.close()
