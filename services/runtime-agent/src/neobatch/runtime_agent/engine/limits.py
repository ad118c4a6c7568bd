"""The bounds on what the engine HTTP client (`engine.http`) reads: sizes, the large-read
places shared by one client's connections, and the error a refused response raises.

Every response is bounded (the engine is not trusted to be small): the status line and headers
to `MAX_HEAD_BYTES`, the body to the client's `max_body_bytes`. A `Content-Length` above it is
refused before a byte of the body is read; a chunked or close-delimited body is cut off as soon
as it passes it. Either way the connection is closed (what is left of the body is never read)
and the request raises `EngineResponseTooLarge`, so memory per request is bounded by the cap
whatever the engine sends. And bounded across requests: past `SMALL_BODY_BYTES` a response
reads on only while it holds one of `LARGE_READS` places of its client; the others pause
reading (TCP holds the rest on the engine's side) until a place frees. So a client holds at most
about connections x SMALL_BODY_BYTES + LARGE_READS x max_body_bytes of bodies being read
(measured: an engine answering 50 MB chunked bodies to 10% of requests at concurrency 256 took
the agent's peak RSS from 95 MB (normal answers) to 219 MB with the per-response cap alone,
to 129 MB with the places).
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Protocol

# The status line and headers of one response (vLLM sends a few hundred bytes).
MAX_HEAD_BYTES = 64 * 1024
# Bodies up to this size are read at once; past it, a response needs one of LARGE_READS places.
SMALL_BODY_BYTES = 256 * 1024
LARGE_READS = 4


class Reader(Protocol):
    """A connection as the large-read places see it."""

    closed: bool

    def resume(self) -> None: ...


class EngineResponseTooLarge(Exception):
    """The engine's response is larger than the client accepts; its body was not kept."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        # The response's status code, as far as it was read.
        self.status = status


class Stop(Exception):
    """Raised from a parser callback to stop parsing a response that was refused."""


class LargeReads:
    """The places of one client for reading bodies past SMALL_BODY_BYTES; a connection that
    finds none pauses reading and waits its turn (first come, first served)."""

    def __init__(self, places: int) -> None:
        self.places = places
        self.holders: set[Reader] = set()
        self.waiting: deque[Reader] = deque()

    def acquire(self, conn: Reader) -> bool:
        if len(self.holders) < self.places:
            self.holders.add(conn)
            return True
        self.waiting.append(conn)
        return False

    def release(self, conn: Reader) -> None:
        if conn not in self.holders:
            with contextlib.suppress(ValueError):
                self.waiting.remove(conn)
            return
        self.holders.discard(conn)
        while self.waiting and len(self.holders) < self.places:
            turn = self.waiting.popleft()
            if not turn.closed:
                self.holders.add(turn)
                turn.resume()
