"""Is an SSH port accepting connections yet? (readiness beyond what the provider reports)."""

from __future__ import annotations

import asyncio
import contextlib


async def port_open(host: str, port: int, timeout_seconds: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_seconds)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
