"""Bearer-key auth on /api/*, open probes, and the JSON error shape for routing errors."""

from __future__ import annotations

import time
from typing import Any

import pytest

from neobatch.common.runtime import ServiceRuntime
from neobatch.common.settings import CommonSettings
from neobatch.console.keys.auth import hash_key, new_api_key
from neobatch.console.settings import read_settings


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
    ],
)
async def test_api_without_the_right_key_is_401_json(api: Any, headers: dict[str, str]) -> None:
    for method, path in (
        ("get", "/api/v1/jobs"),
        ("post", "/api/v1/jobs"),
        ("get", "/api/v1/models"),
        ("post", "/api/v1/files/upload"),
    ):
        r = await getattr(api.client, method)(path, headers=headers)
        assert r.status_code == 401, (method, path)
        assert r.json()["code"] == "unauthorized"
        assert "wrong-key" not in r.text
    assert await api.count("jobs") == 0


async def test_probes_need_no_key(api: Any) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200


async def test_readiness_fails_fast_when_mongo_does_not_answer() -> None:
    # What /readyz turns into a 503: nothing listens on port 9 (discard) on loopback.
    settings = CommonSettings(mongo_url="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=5000")
    runtime = ServiceRuntime("console", settings, health_server=False)
    try:
        started = time.monotonic()
        assert (await runtime.readiness())["mongo"] is False
        # Its own short timeout, not the driver's 5 s server selection.
        assert time.monotonic() - started < 4
    finally:
        await runtime.mongo.close()


async def test_unknown_route_is_404_json(api: Any) -> None:
    r = await api.get("/api/v1/nothing-here")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


async def test_keys_are_stored_hashed_and_the_dev_key_belongs_to_default(api: Any) -> None:
    docs = await api.db["api_keys"].find().sort("_id").to_list(None)
    dev, operator = sorted(docs, key=lambda d: d["_id"] != "key_dev")
    assert dev["_id"] == "key_dev" and dev["project"] == "default"
    assert dev["role"] == "project"
    assert dev["hash"] == hash_key(api.settings.api_key) and dev["revoked_at"] is None
    assert (operator["_id"], operator["project"]) == ("key_operator", "default")
    assert operator["role"] == "operator"
    assert operator["hash"] == hash_key(api.settings.operator_api_key)
    for doc in docs:
        assert api.settings.api_key not in str(doc)
        assert api.settings.operator_api_key not in str(doc)


def test_new_keys_are_random_and_hashes_are_sha256() -> None:
    first, second = new_api_key(), new_api_key()
    assert first != second and first.startswith("nb_") and len(first) > 40
    assert len(hash_key(first)) == 64 and hash_key(first) != hash_key(second)


def test_settings_from_environment_hide_the_key() -> None:
    env = {
        "NEOBATCH_API_KEY": "nb-secret-value-123",
        "NEOBATCH_OPERATOR_API_KEY": "nb-operator-value-456",
        "NEOBATCH_CONSOLE_PORT": "9090",
        "DEFAULT_BATCH_MODEL_DEPLOYMENT_TEMPLATE": "qwen-sim",
        "NATS_URL": "nats://127.0.0.1:1",
        "MONGO_URL": "mongodb://127.0.0.1:2",
        "NEOBATCH_DB": "d",
        "NEOBATCH_NAMESPACE": "n",
        "NEOBATCH_LOG_LEVEL": "debug",
    }
    settings = read_settings(env)
    assert (settings.port, settings.default_template, settings.api_key) == (
        9090,
        "qwen-sim",
        "nb-secret-value-123",
    )
    assert settings.max_upload_bytes == 200 * 1024 * 1024
    assert settings.rate_limit_per_minute == 600
    assert "nb-secret-value-123" not in repr(settings)
    assert settings.operator_api_key == "nb-operator-value-456"
    assert "nb-operator-value-456" not in repr(settings)
