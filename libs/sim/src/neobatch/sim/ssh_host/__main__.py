"""``python -m neobatch.sim.ssh_host --host 127.0.0.1 --port P --authorized-keys FILE
--host-key FILE [--workdir DIR]``: serve until SIGTERM; a missing host-key file is generated."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from neobatch.sim.ssh_host import server
from neobatch.sim.ssh_host.server import start_ssh_host


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m neobatch.sim.ssh_host", description=server.__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2222)
    parser.add_argument("--authorized-keys", required=True, help="authorized_keys file")
    parser.add_argument("--host-key", required=True, help="private host key (created if absent)")
    parser.add_argument("--workdir", default=None, help="cwd for commands (default: home)")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ssh_host = await start_ssh_host(
        args.host,
        args.port,
        Path(args.authorized_keys),
        Path(args.host_key),
        args.workdir,
    )
    print(f"ssh host listening on {ssh_host.host}:{ssh_host.port}", flush=True)
    print(f"host key: {ssh_host.host_public_key}", flush=True)
    try:
        await stop.wait()
    finally:
        await ssh_host.close()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=os.environ.get("NEOBATCH_LOG_LEVEL", "INFO"))
    asyncio.run(_serve(parse_args(argv)))


if __name__ == "__main__":
    main()
