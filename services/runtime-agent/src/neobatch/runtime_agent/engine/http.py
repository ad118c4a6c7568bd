"""A lean HTTP/1.1 client for one engine: keep-alive connections, llhttp parsing (httptools).

Why not aiohttp (library-notes §9 picked it over httpx): the agent spends most of its CPU here.
`task bench:dispatch` measured on a 2-core machine, 256 requests in flight, nginx answering:
`aiohttp.ClientSession` costs about 0.10 ms of CPU per request (request objects, multidicts,
timers, tracing hooks), this client about 0.02 ms. The engine is one origin, reached through our
SSH forward, speaking a narrow HTTP/1.1: so this client sends one request at a time per
connection (no pipelining), keeps connections alive, and leaves all parsing (Content-Length,
chunked bodies, keep-alive rules, malformed input) to httptools, the llhttp binding uvicorn
uses. A connection that timed out, was cancelled or answered `Connection: close` is closed,
never reused: a late answer must not be read as the next request's.

Every response is bounded (the engine is not trusted to be small): its head, its body, and
the bodies one client reads at once; how, and why, is in `engine.limits`. A response over a
bound raises `EngineResponseTooLarge` and its connection is closed, the rest never read.

The origin is `http://host:port` or `unix:/path/to.sock` (the OpenSSH tunnel's local end).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httptools

from neobatch.runtime_agent.dispatch.policy import DEFAULT_MAX_RESPONSE_BYTES
from neobatch.runtime_agent.engine.limits import (
    LARGE_READS,
    MAX_HEAD_BYTES,
    SMALL_BODY_BYTES,
    EngineResponseTooLarge,
    LargeReads,
    Stop,
)

# Response headers kept per response; an engine sends a handful.
Header = tuple[bytes, bytes]
# A connection idle longer than this is closed instead of reused. vLLM's server (uvicorn) closes
# keep-alive connections idle for 5 s; reusing one just as it does would lose the request's
# attempt to a reset that says nothing about the engine.
IDLE_REUSE_SECONDS = 2.0


class EngineConnectionError(Exception):
    """No complete HTTP response: connect refused, connection reset or closed, bad response."""


class EngineResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[Header], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        """The last value of header `name` (case-insensitive), or None."""
        wanted = name.lower().encode()
        found: bytes | None = None
        for key, value in self.headers:
            if key.lower() == wanted:
                found = value
        return None if found is None else found.decode("latin-1")


class Origin:
    """Where the engine is: a TCP host and port, or a unix socket path."""

    __slots__ = ("host", "host_header", "port", "prefix", "unix_path")

    def __init__(
        self, *, host: str = "", port: int = 0, unix_path: str = "", prefix: str = ""
    ) -> None:
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.prefix = prefix
        self.host_header = f"{host}:{port}" if host else "localhost"

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        if base_url.startswith("unix:"):
            path = base_url.removeprefix("unix:")
            if not path.startswith("/"):
                raise ValueError(f"unix engine address needs an absolute path: {base_url!r}")
            return cls(unix_path=path)
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"engine address must be http://host:port or unix:/path: {base_url!r}")
        return cls(host=parts.hostname, port=parts.port or 80, prefix=parts.path.rstrip("/"))

    async def connect(self, factory: Any) -> tuple[asyncio.BaseTransport, _Connection]:
        loop = asyncio.get_running_loop()
        if not self.unix_path:
            return await loop.create_connection(factory, self.host, self.port)
        delay = 0.005
        while True:
            transport, conn = await loop.create_unix_connection(factory, self.unix_path)
            # A unix listener's full backlog (OpenSSH's `ssh -L` listens with 128; the agent
            # opens up to its concurrency at once) makes connect() fail with EAGAIN, which
            # asyncio takes for "in progress" and then reports as connected: the first write
            # would fail. Such a socket has no peer; nothing was sent, so connecting again is
            # safe. (Measured through the tunnel: 79 of 768 burst connects.) The caller's
            # connect timeout bounds the retries.
            try:
                transport.get_extra_info("socket").getpeername()
            except OSError:
                transport.abort()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
            return transport, conn


def _check_header_text(value: str) -> str:
    # Request lines and header values are built from our own data, but a CR or LF would let
    # one value add headers or a second request: refuse it outright.
    if "\r" in value or "\n" in value:
        raise ValueError("CR or LF in an HTTP request line or header")
    return value


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request on it at a time."""

    def __init__(self, large_reads: LargeReads | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._large_reads = large_reads or LargeReads(LARGE_READS)
        # 0: reading freely; 1: holds a large-read place; 2: paused, waiting for one.
        self._large = 0
        # The largest body accepted for the request on the wire (set by `roundtrip`).
        self.max_body = 0
        self.closed = False
        self.reusable = False
        # Loop time when it went back to the pool.
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[EngineResponse] | None = None
        self._headers: list[Header] = []
        self._body: list[bytes] = []
        self._headers_done = False
        # Bytes of the current response read so far: the head until it is complete, then the body.
        self._head_size = 0
        self._body_size = 0
        # A body with neither Content-Length nor chunked encoding ends when the server closes.
        self._until_close = False

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for (a late answer, garbage): this connection is unusable.
            self.discard()
            return
        if not self._headers_done:
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # A refused response (Stop from a callback) has failed its waiter already.
            self._fail(EngineConnectionError(f"malformed response from the engine: {exc}"))
            self.discard()
            return
        if not self._headers_done and self._head_size > MAX_HEAD_BYTES:
            self._refuse(f"response headers over {MAX_HEAD_BYTES} bytes", None)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._leave_large_reads()
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and self._until_close:
            self.on_message_complete()
            return
        reason = f": {exc}" if exc else ""
        self._fail(EngineConnectionError(f"connection closed before a complete response{reason}"))

    # --- httptools callbacks ---

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._body_size = 0
        length: bytes | None = None
        chunked = False
        for key, value in self._headers:
            name = key.lower()
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        self._until_close = length is None and not chunked
        # llhttp has checked the header's syntax (digits only, one value) by now.
        if length is not None and not chunked and int(length) > self.max_body:
            self._refuse(f"Content-Length {int(length)}", self._parser.get_status_code())
            raise Stop

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.max_body:
            self._refuse("body cut off", self._parser.get_status_code())
            raise Stop
        self._body.append(body)
        if self._body_size > SMALL_BODY_BYTES and not self._large:
            if self._large_reads.acquire(self):
                self._large = 1
            elif self.transport is not None:
                self._large = 2
                self.transport.pause_reading()

    def resume(self) -> None:
        """Our turn to read a large body (`LargeReads`)."""
        self._large = 1
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _leave_large_reads(self) -> None:
        if not self._large:
            return
        paused, self._large = self._large == 2, 0
        self._large_reads.release(self)
        if paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue): the real one follows on the same request.
            self._waiter = waiter
            self._reset()
            return
        self.reusable = not self.closed and self._parser.should_keep_alive()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        waiter.set_result(EngineResponse(status, self._headers, body))
        self._reset()

    # --- ours ---

    def _reset(self) -> None:
        self._leave_large_reads()
        self._headers = []
        self._body = []
        self._headers_done = False
        self._head_size = 0
        self._body_size = 0
        self._until_close = False

    def _refuse(self, detail: str, status: int | None) -> None:
        """Fail the request as too large and close the connection (callbacks then raise Stop:
        the rest of what was received is not parsed)."""
        self._body = []
        self._fail(
            EngineResponseTooLarge(
                f"the engine's response is over the {self.max_body}-byte limit ({detail})",
                status,
            )
        )
        self.discard()

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        self.reusable = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def discard(self) -> None:
        self.reusable = False
        self._leave_large_reads()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def roundtrip(self, head: bytes, body: bytes, max_body: int) -> asyncio.Future[EngineResponse]:
        if self.closed or self.transport is None:
            raise EngineConnectionError("connection closed")
        self.reusable = False
        self._reset()
        self.max_body = max_body
        self._waiter = asyncio.get_running_loop().create_future()
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return self._waiter


class EngineHTTP:
    """A small pool of keep-alive connections to one origin, at most `max_connections` open."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        max_body_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        connect_timeout_seconds: float = 10.0,
        idle_reuse_seconds: float = IDLE_REUSE_SECONDS,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.origin = Origin.parse(base_url)
        self.max_body_bytes = max_body_bytes
        self._connect_timeout = connect_timeout_seconds
        self._idle_reuse = idle_reuse_seconds
        self._slots = asyncio.Semaphore(max_connections)
        self._large_reads = LargeReads(LARGE_READS)
        self._idle: list[_Connection] = []
        self._closed = False

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        timeout_seconds: float,
    ) -> EngineResponse:
        """Send one request and read its whole response within `timeout_seconds` (TimeoutError).

        Raises EngineConnectionError when no complete response came back, and
        EngineResponseTooLarge when the response passed `max_body_bytes` (or its head
        `MAX_HEAD_BYTES`): its connection is closed at once and the rest of it never read.
        """
        origin = self.origin
        lines = [f"{method} {_check_header_text(origin.prefix + path)} HTTP/1.1"]
        lines.append(f"Host: {origin.host_header}")
        for name, value in headers:
            lines.append(f"{_check_header_text(name)}: {_check_header_text(value)}")
        if body or method not in ("GET", "HEAD"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        async with asyncio.timeout(timeout_seconds), self._slots:
            conn = await self._connection()
            try:
                response = await conn.roundtrip(head, body, self.max_body_bytes)
            finally:
                # Reused only after a complete answer that allows it; a timeout or a cancel
                # lands here with the answer still owed, and that connection is closed.
                if conn.reusable and not self._closed:
                    conn.idle_since = asyncio.get_running_loop().time()
                    self._idle.append(conn)
                else:
                    conn.discard()
            return response

    async def _connection(self) -> _Connection:
        if self._closed:
            raise EngineConnectionError("client closed")
        idle = self._idle
        if idle:
            fresh_since = asyncio.get_running_loop().time() - self._idle_reuse
            while idle:
                conn = idle.pop()  # the most recently used: least likely to be timed out
                if not conn.closed and conn.idle_since >= fresh_since:
                    return conn
                conn.discard()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await self.origin.connect(lambda: _Connection(self._large_reads))
        except TimeoutError:
            raise EngineConnectionError(
                f"no connection to the engine within {self._connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise EngineConnectionError(f"cannot connect to the engine: {exc}") from None
        return conn

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.discard()
