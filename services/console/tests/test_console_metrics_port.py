"""With NEOBATCH_METRICS_PORT set, /metrics is served on that port only, never on the API port.

The API port is what the console exposes to every tenant; the metrics (job counts per status,
machines leased, per-provider provisioning) are for the operator's scraper alone.
"""

from __future__ import annotations

from typing import Any

import httpx
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from neobatch.console.app import create_app
from neobatch.console.settings import ConsoleSettings, read_settings
from neobatch.sim.testing.servers import LOOPBACK, free_port


async def test_metrics_only_on_the_metrics_port_when_it_is_set(
    console_settings: ConsoleSettings,
) -> None:
    port = free_port()
    settings = ConsoleSettings(
        common=console_settings.common, api_key=console_settings.api_key, metrics_port=port
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        on_api = await client.get("/metrics")
        assert on_api.status_code == 404, on_api.text
        assert on_api.json()["code"] == "not_found"
        # The probes stay on the API port (the deployments probe it there).
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}", trust_env=False) as own:
            metrics = await own.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            names = {f.name for f in text_string_to_metric_families(metrics.text)}
            assert "neobatch_jobs" in names
            assert (await own.get("/healthz")).status_code == 200
            # Nothing of the API on the metrics listener.
            assert (await own.get("/v1/files")).status_code == 404
    # The listener goes away with the app.
    async with httpx.AsyncClient(trust_env=False) as after:
        try:
            await after.get(f"http://{LOOPBACK}:{port}/metrics", timeout=2)
            raise AssertionError("metrics listener still up after shutdown")
        except httpx.ConnectError:
            pass


async def test_without_a_metrics_port_metrics_stay_on_the_api_port(api: Any) -> None:
    r = await api.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")


def test_metrics_port_is_a_declared_setting() -> None:
    assert read_settings({"NEOBATCH_METRICS_PORT": "9090"}).metrics_port == 9090
    assert read_settings({}).metrics_port == 0
