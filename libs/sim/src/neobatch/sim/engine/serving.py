"""Serving the engine simulator inside the current event loop: start, stop, and run it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from neobatch.sim.engine.app import EngineConfig, build_app


@dataclass(slots=True)
class RunningEngine:
    """An engine simulator serving inside the current event loop."""

    host: str
    port: int
    config: EngineConfig
    _runner: web.AppRunner

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def url(self) -> str:
        """Base URL without ``/v1`` (``url + "/v1/chat/completions"``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-client style base URL, ending in ``/v1``."""
        return self.url + "/v1"

    async def stop(self) -> None:
        await self._runner.cleanup()


def make_config(config: EngineConfig | None = None, **opts: Any) -> EngineConfig:
    """Apply keyword overrides (any EngineConfig field: model, latency_ms, failure_rate, ...)."""
    return replace(config or EngineConfig(), **opts)


RUNNER_OPTIONS: dict[str, Any] = {
    "access_log": None,
    "handle_signals": False,
    "handler_cancellation": True,
    "shutdown_timeout": 1.0,
}


async def start_engine(
    host: str = "127.0.0.1", port: int = 0, config: EngineConfig | None = None, **opts: Any
) -> RunningEngine:
    """Start serving in the running loop; ``port=0`` picks a free port (see ``.port``)."""
    config = make_config(config, **opts)
    # A request whose client went away is dropped, as vLLM aborts it; a stop does not wait
    # for requests in flight (aiohttp: until each ends, up to 60 s).
    runner = web.AppRunner(build_app(config), **RUNNER_OPTIONS)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    return RunningEngine(host=host, port=bound_port, config=config, _runner=runner)


@asynccontextmanager
async def running_engine(
    host: str = "127.0.0.1", port: int = 0, config: EngineConfig | None = None, **opts: Any
) -> AsyncIterator[RunningEngine]:
    engine = await start_engine(host, port, config, **opts)
    try:
        yield engine
    finally:
        await engine.stop()


async def run_engine(
    host: str = "127.0.0.1", port: int = 8000, config: EngineConfig | None = None, **opts: Any
) -> None:
    """Serve until cancelled."""
    async with running_engine(host, port, config, **opts):
        await asyncio.Event().wait()
