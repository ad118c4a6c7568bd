"""A webhook receiver for tests: a threaded HTTP server on loopback that records every request
it gets (time, headers, body) and answers from a script (status, headers, or a hang), then 200.

Usable from sync and async tests alike (it runs in its own thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec

from neobatch.sim.testing.servers import LOOPBACK


class Reply(msgspec.Struct, frozen=True):
    status: int = 200
    headers: dict[str, str] = {}
    # Seconds to wait before answering (past the sender's timeout: it sees none).
    hang_seconds: float = 0.0


class Received(msgspec.Struct, frozen=True):
    at: float  # when the request arrived (monotonic)
    headers: dict[str, str]
    body: bytes
    answered: int


class WebhookReceiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        # Every request as it arrived, before its answer (answered 0): a sender killed while
        # the receiver holds its request shows here and not in `received` (until answered).
        self.arrived: list[Received] = []
        self.script: list[Reply] = []
        self.default = Reply()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{LOOPBACK}:{self._server.server_address[1]}/hook"

    def next_reply(self) -> Reply:
        with self._lock:
            return self.script.pop(0) if self.script else self.default

    def record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                arrived = time.monotonic()
                length = min(int(self.headers.get("content-length") or 0), 1 << 20)
                body = self.rfile.read(length)
                reply = receiver.next_reply()
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.arrived.append(Received(arrived, headers, body, 0))
                if reply.hang_seconds:
                    time.sleep(reply.hang_seconds)
                receiver.record(Received(arrived, headers, body, reply.status))
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender gave up (timeout) and closed

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
