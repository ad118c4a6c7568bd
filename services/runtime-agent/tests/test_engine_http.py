"""The lean engine HTTP client against a real loopback server that answers as scripted.

Each case is a wire-level behaviour the dispatch path depends on: keep-alive reuse, every way
a body can be framed, a late answer never read as the next request's, failures as
EngineConnectionError, and the connection bound.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from neobatch.runtime_agent.engine.http import EngineConnectionError, EngineHTTP, Origin
from neobatch.sim.testing.http_wire import read_request

# A handler gets the request head and body and writes whatever bytes it likes.
Handler = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]]


class ScriptedServer:
    """Reads HTTP/1.1 requests (Content-Length bodies) and lets `handler` answer each one.

    The handler returns False to close the connection after its answer.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open_connections = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        # Set while no connection is open.
        self.idle = asyncio.Event()
        self.idle.set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self.most_open = max(self.most_open, self.open_connections)
        self.idle.clear()
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                head, body = request
                self.requests.append(head + body)
                if not await self.handler(head, body, writer):
                    return
        finally:
            self.open_connections -= 1
            if not self.open_connections:
                self.idle.set()
            writer.close()


@asynccontextmanager
async def scripted(
    handler: Handler, *, unix: bool = False
) -> AsyncIterator[tuple[ScriptedServer, str]]:
    server = ScriptedServer(handler)
    if unix:
        directory = tempfile.mkdtemp()
        path = os.path.join(directory, "engine.sock")
        listener = await asyncio.start_unix_server(server.serve, path)
        base = f"unix:{path}"
    else:
        listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
    async with listener:
        yield server, base
        # Let the server see the client's connections close, so no handler is cut off.
        await asyncio.wait_for(server.idle.wait(), 5)


def reply(body: bytes, *, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def echo(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(reply(b'{"echo":' + (body or b"null") + b"}", extra=b"X-Request-Id: r-1\r\n"))
    await writer.drain()
    return True


async def test_keep_alive_reuses_one_connection_and_returns_body_and_headers() -> None:
    async with scripted(echo) as (server, base):
        http = EngineHTTP(base, max_connections=4)
        for n in range(3):
            resp = await http.request(
                "POST",
                "/v1/chat/completions",
                body=b'{"n":%d}' % n,
                headers=[("Content-Type", "application/json")],
                timeout_seconds=5,
            )
            assert resp.status == 200
            assert resp.body == b'{"echo":{"n":%d}}' % n
            assert resp.header("x-request-id") == "r-1"
            assert resp.header("Retry-After") is None
        await http.close()
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"Content-Length: 7\r\n" in server.requests[0]


async def test_a_connection_idle_too_long_is_not_reused() -> None:
    """The server may be closing it right now (uvicorn: after 5 s idle): a new one is opened.

    With a bound of 0 every pooled connection has been idle too long by the next request.
    """
    async with scripted(echo) as (server, base):
        http = EngineHTTP(base, max_connections=2, idle_reuse_seconds=0.0)
        for _ in range(3):
            assert (await http.request("GET", "/health", timeout_seconds=5)).status == 200
        assert http.idle_connections == 1  # only the last one, the others were closed
        await http.close()
    assert server.connections == 3


async def test_chunked_body_is_reassembled() -> None:
    async def chunked(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b'{"a":', b"1", b"}"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    async with scripted(chunked) as (server, base):
        http = EngineHTTP(base, max_connections=1)
        first = await http.request("POST", "/x", body=b"{}", timeout_seconds=5)
        second = await http.request("POST", "/x", body=b"{}", timeout_seconds=5)
        await http.close()
    assert first.body == second.body == b'{"a":1}'
    assert server.connections == 1


async def test_body_delimited_by_close_is_read_to_the_end() -> None:
    async def until_close(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        writer.write(b'{"whole":')
        await writer.drain()
        writer.write(b"true}")
        return False

    async with scripted(until_close) as (server, base):
        http = EngineHTTP(base, max_connections=1)
        resp = await http.request("POST", "/x", body=b"{}", timeout_seconds=5)
        again = await http.request("POST", "/x", body=b"{}", timeout_seconds=5)
        await http.close()
    assert resp.body == again.body == b'{"whole":true}'
    assert server.connections == 2


async def test_connection_close_answer_is_not_reused() -> None:
    async def close_each(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply(b"{}", extra=b"Connection: close\r\n"))
        await writer.drain()
        return False

    async with scripted(close_each) as (server, base):
        http = EngineHTTP(base, max_connections=2)
        for _ in range(3):
            assert (await http.request("POST", "/x", body=b"{}", timeout_seconds=5)).status == 200
        await http.close()
    assert server.connections == 3


async def test_a_late_answer_is_never_taken_for_the_next_request() -> None:
    async def slow_first(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        if body == b'"first"':
            await asyncio.sleep(0.5)
        writer.write(reply(body))
        await writer.drain()
        return True

    async with scripted(slow_first) as (server, base):
        http = EngineHTTP(base, max_connections=1)
        with pytest.raises(TimeoutError):
            await http.request("POST", "/x", body=b'"first"', timeout_seconds=0.1)
        second = await http.request("POST", "/x", body=b'"second"', timeout_seconds=5)
        await http.close()
    assert second.body == b'"second"'
    assert server.connections == 2  # the timed-out connection was dropped, not reused


async def test_error_statuses_come_back_as_responses() -> None:
    async def overloaded(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply(b"busy", status="429 Too Many Requests", extra=b"Retry-After: 3\r\n"))
        await writer.drain()
        return True

    async with scripted(overloaded) as (_, base):
        http = EngineHTTP(base, max_connections=1)
        resp = await http.request("POST", "/x", body=b"{}", timeout_seconds=5)
        await http.close()
    assert (resp.status, resp.body, resp.header("retry-after")) == (429, b"busy", "3")


async def test_refused_connection_is_an_engine_connection_error() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    http = EngineHTTP(f"http://127.0.0.1:{port}", max_connections=1)
    with pytest.raises(EngineConnectionError, match="cannot connect"):
        await http.request("GET", "/health", timeout_seconds=5)


async def test_connection_dropped_mid_response_is_an_engine_connection_error() -> None:
    async def half(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
        await writer.drain()
        return False

    async with scripted(half) as (_, base):
        http = EngineHTTP(base, max_connections=1)
        with pytest.raises(EngineConnectionError, match="before a complete response"):
            await http.request("POST", "/x", body=b"{}", timeout_seconds=5)
        await http.close()


async def test_malformed_response_is_an_engine_connection_error() -> None:
    async def garbage(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        return True

    async with scripted(garbage) as (_, base):
        http = EngineHTTP(base, max_connections=1)
        with pytest.raises(EngineConnectionError, match="malformed"):
            await http.request("POST", "/x", body=b"{}", timeout_seconds=5)
        await http.close()


async def test_unix_socket_origin() -> None:
    async with scripted(echo, unix=True) as (server, base):
        http = EngineHTTP(base, max_connections=2)
        resp = await http.request("GET", "/health", timeout_seconds=5)
        await http.close()
    assert resp.body == b'{"echo":null}'
    assert server.requests[0].startswith(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")


async def test_never_more_connections_than_the_bound() -> None:
    async def slow(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(reply(b"{}"))
        await writer.drain()
        return True

    async with scripted(slow) as (server, base):
        http = EngineHTTP(base, max_connections=3)
        answers = await asyncio.gather(
            *(http.request("POST", "/x", body=b"{}", timeout_seconds=5) for _ in range(12))
        )
        await http.close()
    assert [a.status for a in answers] == [200] * 12
    assert server.most_open == 3
    assert server.connections == 3


async def test_header_injection_is_refused_before_anything_is_sent() -> None:
    async with scripted(echo) as (server, base):
        http = EngineHTTP(base, max_connections=1)
        with pytest.raises(ValueError, match="CR or LF"):
            await http.request(
                "POST", "/x", headers=[("X-Request-Id", "a\r\nX-Evil: 1")], timeout_seconds=5
            )
        with pytest.raises(ValueError, match="CR or LF"):
            await http.request("GET", "/x HTTP/1.1\r\nHost: evil\r\n\r\nGET /y", timeout_seconds=5)
        await http.close()
    assert server.requests == []


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://127.0.0.1:8000", ("127.0.0.1", 8000, "", "")),
        ("http://localhost:9/prefix/", ("localhost", 9, "", "/prefix")),
        ("unix:/run/x/engine.sock", ("", 0, "/run/x/engine.sock", "")),
    ],
)
def test_origin_parse(base: str, expected: tuple[str, int, str, str]) -> None:
    origin = Origin.parse(base)
    assert (origin.host, origin.port, origin.unix_path, origin.prefix) == expected


@pytest.mark.parametrize(
    "base", ["https://h:1", "unix:relative.sock", "127.0.0.1:80", "http://h:1/?q"]
)
def test_origin_parse_refuses_what_it_cannot_reach(base: str) -> None:
    with pytest.raises(ValueError):
        Origin.parse(base)
