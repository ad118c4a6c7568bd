"""``python -m neobatch.sim.demo [--requests 100] [--timeout 300]``: the last step of ``./task up``.

The console URL and API key come from ``NEOBATCH_CONSOLE_URL`` / ``NEOBATCH_API_KEY`` when set,
else from ``.run/stack.env`` written by ``devstack up``; the demo itself is ``demo.Demo``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from neobatch.sim.devstack.demo import Demo, DemoError
from neobatch.sim.devstack.layout import RunLayout, StackError, find_run_dir, read_env_file
from neobatch.sim.testing.servers import is_loopback


@dataclass(frozen=True)
class Connection:
    console_url: str
    api_key: str
    # Models and templates are made with it; empty: the API key is tried (a 403 says why).
    operator_key: str = ""


def load_connection(
    environ: Mapping[str, str], run_dir_finder: Callable[[], Path] = find_run_dir
) -> Connection:
    """Explicit environment first, so the demo can target any console; else the local stack."""
    url = environ.get("NEOBATCH_CONSOLE_URL", "").strip()
    key = environ.get("NEOBATCH_API_KEY", "").strip()
    operator = environ.get("NEOBATCH_OPERATOR_KEY", "").strip()
    if not (url and key):
        try:
            stack_env = RunLayout(run_dir_finder()).stack_env
        except StackError as error:
            raise DemoError(f"{error}; or set NEOBATCH_CONSOLE_URL and NEOBATCH_API_KEY") from None
        recorded = read_env_file(stack_env)
        url = url or recorded.get("NEOBATCH_CONSOLE_URL", "")
        key = key or recorded.get("NEOBATCH_API_KEY", "")
        operator = operator or recorded.get("NEOBATCH_OPERATOR_KEY", "")
        if not (url and key):
            raise DemoError(
                f"no console URL/API key: {stack_env} is missing or incomplete. Start the stack "
                "with `./task up`, or set NEOBATCH_CONSOLE_URL and NEOBATCH_API_KEY"
            )
    return Connection(url.rstrip("/"), key, operator)


def make_client(connection: Connection) -> httpx.Client:
    return httpx.Client(
        base_url=connection.console_url,
        headers={"Authorization": f"Bearer {connection.api_key}"},
        timeout=httpx.Timeout(30.0, connect=5.0),
        # A proxy from the user's environment must not capture requests to the local stack.
        trust_env=not is_loopback(urlsplit(connection.console_url).hostname or ""),
    )


@contextlib.contextmanager
def _input_dir() -> Iterator[Path]:
    """``.run/demo`` beside the stack, kept for inspection; a temp dir if there is no repo."""
    try:
        directory = find_run_dir() / "demo"
    except StackError:
        with tempfile.TemporaryDirectory(prefix="neobatch-demo-") as tmp:
            yield Path(tmp)
        return
    directory.mkdir(parents=True, exist_ok=True)
    yield directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neobatch.sim.demo",
        description="Submit a demo batch to the console and wait for the job to finish.",
    )
    parser.add_argument("--requests", type=int, default=100, help="batch size (%(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the job (%(default)s)"
    )
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    try:
        connection = load_connection(os.environ)
        with _input_dir() as input_dir, make_client(connection) as client:
            demo = Demo(
                client,
                connection.console_url,
                connection.api_key,
                operator_key=connection.operator_key,
            )
            return demo.run(args.requests, args.timeout, input_dir / "batch_input.jsonl")
    except DemoError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    except httpx.TransportError as error:
        print(f"demo: cannot reach the console: {error}", file=sys.stderr)
        return 1
