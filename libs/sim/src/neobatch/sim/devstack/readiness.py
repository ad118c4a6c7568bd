"""Whether a started component came up, and what its log says when it did not."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from neobatch.sim.devstack.layout import StackError
from neobatch.sim.devstack.processes import ProcessHandle

LOG_TAIL_LINES = 40


def wait_console_healthy(
    handle: ProcessHandle, url: str, log_path: Path, timeout_seconds: float
) -> None:
    """Poll the console's ``url`` (its /healthz) until it answers 200; fail fast if it exits."""
    deadline = time.monotonic() + timeout_seconds
    last: int | None = None
    while True:
        if not handle.alive():
            raise StackError(
                f"console exited before {url} answered; last lines of {log_path}:\n"
                f"{indent(log_tail(log_path))}"
            )
        last = http_status(url)
        if last == 200:
            return
        if time.monotonic() >= deadline:
            answer = "no answer" if last is None else f"last answer HTTP {last}"
            raise StackError(
                f"console not healthy: GET {url} did not return 200 within {timeout_seconds:g}s "
                f"({answer}); last lines of {log_path}:\n{indent(log_tail(log_path))}"
            )
        time.sleep(0.2)


def settle(services: Mapping[str, tuple[ProcessHandle, str]], seconds: float) -> None:
    """Wait up to ``seconds`` for each service (handle, base URL of its probes) to answer
    /readyz, so a start-up that fails (bad settings, a refused login) shows as an exit; returns
    early once every one is ready, or as soon as one has exited (the caller reports which)."""
    deadline = time.monotonic() + seconds
    pending = dict(services)
    while pending and time.monotonic() < deadline:
        if any(not handle.alive() for handle, _ in services.values()):
            return
        pending = {
            name: (handle, url)
            for name, (handle, url) in pending.items()
            if http_status(f"{url}/readyz", timeout_seconds=0.5) != 200
        }
        if pending:
            time.sleep(0.1)


# Loopback requests must never go through an HTTP proxy configured in the user's environment.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout_seconds: float = 2.0) -> int | None:
    """Status code of a GET, or None if nothing answered."""
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout_seconds) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 64 * 1024))
            data = log.read()
    except OSError:
        return f"(no log at {path})"
    text = data.decode(errors="replace").splitlines()[-lines:]
    return "\n".join(text) if text else f"(log {path} is empty)"


def indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())
