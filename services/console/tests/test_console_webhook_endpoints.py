"""Webhook endpoints (issue 17): a project registers, lists, reads, updates, rotates and deletes
them in OpenAI's shape; the secret is answered once; URLs that reach inside the network are
refused; another project sees none of them."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest

from neobatch.common.sealing import SealingKey, UnsealError
from neobatch.common.webhooks import UrlPolicy

BODY = {"url": "https://93.184.215.14/hook", "event_types": ["batch.completed"], "name": "ci"}


async def test_create_answers_the_secret_once_and_lists_without_it(api: Any) -> None:
    r = await api.post("/v1/webhook_endpoints", BODY)
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["object"] == "webhook_endpoint"
    assert created["signing_secret"].startswith("whsec_")
    assert created["status"] == "enabled"
    assert created["signing_secret_hint"].endswith(created["signing_secret"][-4:])

    listed = (await api.get("/v1/webhook_endpoints")).json()
    assert [e["id"] for e in listed["data"]] == [created["id"]]
    one = (await api.get(f"/v1/webhook_endpoints/{created['id']}")).json()
    alias = (await api.get(f"/api/v1/webhooks/{created['id']}")).json()
    for shown in (listed["data"][0], one, alias, listed):
        assert created["signing_secret"] not in str(shown)
    assert one["event_types"] == ["batch.completed"]


async def test_another_project_sees_nothing(api: Any) -> None:
    created = (await api.post("/v1/webhook_endpoints", BODY)).json()
    _, other = await api.new_key("other")
    assert (await api.get("/v1/webhook_endpoints", headers=other)).json()["data"] == []
    r = await api.get(f"/v1/webhook_endpoints/{created['id']}", headers=other)
    assert r.status_code == 404 and r.json()["code"] == "webhook_endpoint_not_found"
    r = await api.client.delete(f"/v1/webhook_endpoints/{created['id']}", headers=other)
    assert r.status_code == 404
    assert await api.count("webhook_endpoints") == 1


async def test_rotation_keeps_the_old_secret_for_the_grace_period_when_asked(api: Any) -> None:
    created = (await api.post("/v1/webhook_endpoints", BODY)).json()
    path = f"/v1/webhook_endpoints/{created['id']}/rotate_secret"
    r = await api.post(path, {"keep_old_secret_active_for_24_hours": True})
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["signing_secret"] != created["signing_secret"]
    doc = await api.db["webhook_endpoints"].find_one({"_id": created["id"]})
    secrets = {s["secret"]: s["expires_at"] for s in doc["signing_secrets"]}
    assert secrets[rotated["signing_secret"]] is None
    assert secrets[created["signing_secret"]] is not None  # valid for 24 h more

    r = await api.post(path, {})  # without the grace: only the newest is valid
    doc = await api.db["webhook_endpoints"].find_one({"_id": created["id"]})
    assert [s["secret"] for s in doc["signing_secrets"]] == [r.json()["signing_secret"]]


async def test_update_delete_and_event_types(api: Any) -> None:
    created = (await api.post("/v1/webhook_endpoints", BODY)).json()
    path = f"/v1/webhook_endpoints/{created['id']}"
    r = await api.post(path, {"event_types": ["batch.failed", "job.status_changed"]})
    assert r.status_code == 200 and r.json()["event_types"] == [
        "batch.failed",
        "job.status_changed",
    ]
    r = await api.post(path, {"enabled": False})
    assert r.json()["status"] == "disabled" and r.json()["disabled_reason"]
    r = await api.post(path, {"enabled": True})
    assert r.json()["status"] == "enabled" and r.json()["disabled_reason"] is None
    types = (await api.get("/v1/webhook_event_types")).json()["data"]
    assert "batch.completed" in types and "job.status_changed" in types
    r = await api.client.delete(path, headers=api.auth)
    assert r.json() == {"id": created["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    assert (await api.get(path)).status_code == 404
    r = await api.get(f"{path}/deliveries")
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://127.0.0.1/hook", "forbidden_address"),
        ("https://10.0.0.1/hook", "forbidden_address"),
        ("https://169.254.169.254/latest/meta-data", "forbidden_address"),
        ("https://[::1]:8443/hook", "forbidden_address"),
        ("https://[::ffff:10.0.0.1]/hook", "forbidden_address"),
        ("https://localhost/hook", "forbidden_address"),  # a name resolving to loopback
        ("http://93.184.215.14/hook", "insecure_url"),
        ("https://user:pw@93.184.215.14/hook", "invalid_url"),
        ("ftp://93.184.215.14/hook", "invalid_url"),
        ("https://no-such-host.invalid/hook", "unresolvable_url"),
    ],
)
async def test_urls_inside_the_network_are_refused(api: Any, url: str, code: str) -> None:
    r = await api.post("/v1/webhook_endpoints", {**BODY, "url": url})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == code
    assert await api.count("webhook_endpoints") == 0


async def test_the_operator_allow_list_admits_loopback(api: Any) -> None:
    policy = UrlPolicy(allow_http=True, allowed_networks=("127.0.0.0/8",))
    api.client.app.state.settings = msgspec.structs.replace(api.settings, webhook_urls=policy)
    r = await api.post("/v1/webhook_endpoints", {**BODY, "url": "http://127.0.0.1:9/hook"})
    assert r.status_code == 200, r.text
    r = await api.post("/v1/webhook_endpoints", {**BODY, "url": "http://10.0.0.1/hook"})
    assert r.status_code == 400 and r.json()["code"] == "forbidden_address"


async def test_bad_bodies_get_stable_codes(api: Any) -> None:
    for body in (
        {**BODY, "event_types": ["batch.exploded"]},
        {**BODY, "event_types": []},
        {**BODY, "url": "x" * 3000},
        {"event_types": ["batch.completed"]},
        {**BODY, "extra": 1},
    ):
        r = await api.post("/v1/webhook_endpoints", body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["code"] in ("invalid_request", "invalid_url"), r.text


async def test_secrets_are_sealed_at_rest_with_an_operator_key(api: Any) -> None:
    """A reader of the database gets no usable secret: it is sealed with the operator's key,
    and only the notifier (holding the same key) opens it."""
    sealing = SealingKey(key=base64.b64encode(b"k" * 32).decode())
    api.client.app.state.settings = msgspec.structs.replace(api.settings, webhook_sealing=sealing)
    created = (await api.post("/v1/webhook_endpoints", BODY)).json()
    rotated = (
        await api.post(
            f"/v1/webhook_endpoints/{created['id']}/rotate_secret",
            {"keep_old_secret_active_for_24_hours": True},
        )
    ).json()
    doc = await api.db["webhook_endpoints"].find_one({"_id": created["id"]})
    stored = [s["secret"] for s in doc["signing_secrets"]]
    assert all(s.startswith("sealed:v1:") for s in stored)
    assert created["signing_secret"] not in str(doc) and rotated["signing_secret"] not in str(doc)
    assert [sealing.unseal(s) for s in stored] == [
        rotated["signing_secret"],
        created["signing_secret"],
    ]
    with pytest.raises(UnsealError):
        SealingKey(key=base64.b64encode(b"x" * 32).decode()).unseal(stored[0])
