"""Projects: keys made with the admin CLI, and two projects that cannot see each other."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from neobatch.console.keys.cli import run

CHAT = "/v1/chat/completions"


async def make_key(project: str, monkeypatch: pytest.MonkeyPatch, api: Any) -> tuple[str, str]:
    monkeypatch.setenv("MONGO_URL", api.settings.common.mongo_url)
    monkeypatch.setenv("NEOBATCH_DB", api.db.name)
    out = io.StringIO()
    assert await run(["create", "--project", project, "--name", f"{project} key"], out) == 0
    printed = out.getvalue()
    key_id = re.search(r"key_id=(\S+)", printed)[1]  # type: ignore[index]
    api_key = re.search(r"api_key=(\S+)", printed)[1]  # type: ignore[index]
    return key_id, api_key


async def test_keys_cli_creates_lists_and_revokes(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id, api_key = await make_key("alpha", monkeypatch, api)
    doc = await api.db["api_keys"].find_one({"_id": key_id})
    assert doc["project"] == "alpha" and api_key not in str(doc)
    headers = {"Authorization": f"Bearer {api_key}"}
    assert (await api.client.get("/v1/batches", headers=headers)).status_code == 200

    listing = io.StringIO()
    assert await run(["list"], listing) == 0
    assert key_id in listing.getvalue() and "project=alpha" in listing.getvalue()
    assert doc["hash"] not in listing.getvalue() and api_key not in listing.getvalue()

    assert await run(["revoke", key_id], io.StringIO()) == 0
    assert await run(["revoke", key_id], io.StringIO()) == 1
    r = await api.client.get("/v1/batches", headers=headers)
    assert r.status_code == 401 and api_key not in r.text


async def test_two_projects_cannot_see_each_other(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.ready_template()
    _, other_key = await make_key("beta", monkeypatch, api)
    other = {"Authorization": f"Bearer {other_key}"}

    # Project "default" (the dev key) owns a file, a job and a batch.
    file_id = await api.uploaded_file()
    job = (await api.post("/api/v1/jobs", await api.job_request())).json()
    batch_body = {
        "input_file_id": file_id,
        "endpoint": CHAT,
        "metadata": {"neobatch.template_name": api.template_name},
    }
    batch = (await api.post("/v1/batches", batch_body)).json()

    for path in (
        f"/v1/files/{file_id}",
        f"/v1/files/{file_id}/content",
        f"/api/v1/files/{file_id}",
        f"/api/v1/files/{file_id}/content",
        f"/api/v1/jobs/{job['id']}",
        f"/v1/batches/{batch['id']}",
        f"/v1/batches/{job['batch_id']}",
    ):
        r = await api.client.get(path, headers=other)
        assert r.status_code == 404, path
        assert set(r.json()) == {"code", "message"} and "default" not in r.text
    for path in (f"/api/v1/jobs/{job['id']}/cancel", f"/v1/batches/{batch['id']}/cancel"):
        assert (await api.client.post(path, headers=other)).status_code == 404
    assert (await api.client.delete(f"/v1/files/{file_id}", headers=other)).status_code == 404
    # Using the other project's file as input reads as a missing file.
    r = await api.client.post("/v1/batches", headers=other, json=batch_body)
    assert (r.status_code, r.json()["code"]) == (400, "file_not_found")

    for path, key in (("/v1/files", "data"), ("/v1/batches", "data"), ("/api/v1/jobs", "jobs")):
        assert (await api.client.get(path, headers=other)).json()[key] == [], path
        assert len((await api.get(path)).json()[key]) >= 1, path
    assert (await api.db["jobs"].find_one({"_id": job["id"]}))["cancel_requested_at"] is None
    assert await api.count("files.files", {"_id": file_id}) == 1
