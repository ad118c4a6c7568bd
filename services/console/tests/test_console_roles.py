"""Operator and project keys (issue 13): who may change the catalog, who may cancel a job."""

from __future__ import annotations

import io
import re
from typing import Any

import msgspec
import pytest

from neobatch.common.errors import ConfigError
from neobatch.console.app import create_app
from neobatch.console.keys.cli import run

CHAT = "/v1/chat/completions"


async def test_a_project_key_cannot_create_models_or_templates(api: Any) -> None:
    """The attack of issue 13 finding 1: project `other` registers a model and a template."""
    _, other = await api.new_key("other")
    for headers in (other, api.auth):
        r = await api.post("/api/v1/models", {"name": "Sim Chat 1B"}, headers=headers)
        assert (r.status_code, r.json()["code"]) == (403, "operator_only"), r.text
    assert await api.count("models") == 0

    model_id = await api.ready_template()  # the operator publishes one
    body = api.template_body(name="hijack", version="v9.0.0")
    for headers in (other, api.auth):
        r = await api.post(f"/api/v1/models/{model_id}/deployment-templates", body, headers=headers)
        assert (r.status_code, r.json()["code"]) == (403, "operator_only"), r.text
    assert await api.count("templates") == 1
    # Reading the catalog stays open to project keys.
    assert (await api.get(f"/api/v1/models/{model_id}", headers=other)).status_code == 200
    listed = await api.get(f"/api/v1/models/{model_id}/deployment-templates", headers=other)
    assert [t["name"] for t in listed.json()["data"]] == [api.template_name]


async def test_keys_cli_makes_operator_keys(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONGO_URL", api.settings.common.mongo_url)
    monkeypatch.setenv("NEOBATCH_DB", api.db.name)
    out = io.StringIO()
    assert await run(["create", "--operator", "--name", "ops"], out) == 0
    key_id = re.search(r"key_id=(\S+)", out.getvalue())[1]  # type: ignore[index]
    api_key = re.search(r"api_key=(\S+)", out.getvalue())[1]  # type: ignore[index]
    doc = await api.db["api_keys"].find_one({"_id": key_id})
    assert (doc["role"], doc["project"]) == ("operator", "default")
    r = await api.post(
        "/api/v1/models", {"name": "Ops Model"}, headers={"Authorization": f"Bearer {api_key}"}
    )
    assert r.status_code == 200, r.text

    out = io.StringIO()
    assert await run(["create", "--project", "beta"], out) == 0
    assert "role=project" in out.getvalue()
    listing = io.StringIO()
    assert await run(["list"], listing) == 0
    assert f"{key_id}\tproject=default\trole=operator" in listing.getvalue()
    with pytest.raises(SystemExit):
        await run(["create"], io.StringIO())  # a project key needs its project


async def test_a_key_stored_without_a_role_is_a_project_key(api: Any) -> None:
    key_id, headers = await api.new_key("legacy")
    await api.db["api_keys"].update_one({"_id": key_id}, {"$unset": {"role": ""}})
    r = await api.post("/api/v1/models", {"name": "Legacy"}, headers=headers)
    assert (r.status_code, r.json()["code"]) == (403, "operator_only")
    assert (await api.get("/v1/batches", headers=headers)).status_code == 200


async def test_cancel_after_the_creators_key_is_revoked(api: Any) -> None:
    """Issue 13 finding 6: revoke the creating key and the job was uncancellable."""
    await api.ready_template()
    creator_id, creator = await api.new_key("team")
    _, teammate = await api.new_key("team")
    _, stranger = await api.new_key("elsewhere")
    jobs, batches = [], []
    for _ in range(2):
        file_id = await api.uploaded_file(headers=creator)
        body = {"input_dataset": file_id, "endpoint": CHAT, "model_template_name": "qwen-sim"}
        r = await api.post("/api/v1/jobs", body, headers=creator)
        assert r.status_code == 200, r.text
        jobs.append(r.json()["id"])
        batch = {"input_file_id": file_id, "endpoint": CHAT}
        batch["metadata"] = {"neobatch.template_name": "qwen-sim"}
        r = await api.post("/v1/batches", batch, headers=creator)
        assert r.status_code == 200, r.text
        batches.append(r.json()["id"])
    await api.db["api_keys"].update_one({"_id": creator_id}, {"$set": {"revoked_at": 1}})

    # Another project's key: as missing, and nothing is recorded.
    assert (await api.post(f"/api/v1/jobs/{jobs[0]}/cancel", headers=stranger)).status_code == 404
    r = await api.post(f"/v1/batches/{batches[0]}/cancel", headers=stranger)
    assert r.status_code == 404
    assert await api.count("jobs", {"cancel_requested_at": {"$ne": None}}) == 0

    # Any other key of the job's project, and an operator, may cancel.
    for headers, job_id, batch_id in (
        (teammate, jobs[0], batches[0]),
        (api.operator, jobs[1], batches[1]),
    ):
        r = await api.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["cancel_requested_at"] is not None
        r = await api.post(f"/v1/batches/{batch_id}/cancel", headers=headers)
        assert (r.status_code, r.json()["status"]) == (200, "cancelling"), r.text
    assert await api.count("jobs", {"cancel_requested_at": {"$ne": None}}) == 4
    # The operator reads any project's job by id.
    got = await api.get(f"/api/v1/jobs/{jobs[0]}", headers=api.operator)
    assert got.status_code == 200 and got.json()["id"] == jobs[0]


def test_the_dev_key_and_the_operator_key_must_differ(console_settings: Any) -> None:
    same = msgspec.structs.replace(console_settings, operator_api_key=console_settings.api_key)
    with pytest.raises(ConfigError, match="must differ"):
        create_app(same)
