"""``python -m neobatch.sim.runpod`` / ``python -m neobatch.sim.lambda_cloud``: serve until SIGTERM.

The API key the simulator accepts comes from the environment (``SIM_API_KEY``), never argv.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from neobatch.sim.cloud.sim import RunningSim

Starter = Callable[..., Awaitable[RunningSim]]


def parse(prog: str, argv: Sequence[str] | None, lambda_options: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--time-factor", type=float, default=1.0)
    parser.add_argument(
        "--real-engine-python",
        default=None,
        help="a vLLM CPU venv's python: machines run the real engine for `vllm serve`",
    )
    if lambda_options:
        parser.add_argument("--ssh-port", type=int, required=True)
        parser.add_argument(
            "--ssh-key", action="append", default=[], help="NAME=PUBLIC_KEY_FILE to register"
        )
    return parser.parse_args(argv)


def run(starter: Starter, options: dict[str, Any], host: str, port: int) -> None:
    api_key = os.environ.get("SIM_API_KEY", "")
    if not api_key:
        sys.exit("SIM_API_KEY must name the API key the simulator accepts")

    async def serve() -> None:
        running = await starter(host, port, api_key=api_key, **options)
        print(f"simulator listening on {running.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await running.stop()

    asyncio.run(serve())
