"""Operator keys over HTTP (issue 13): operators see every project's jobs, batches and files;
project keys stay confined to their own project."""

from __future__ import annotations

from typing import Any

CHAT = "/v1/chat/completions"


async def _job_and_batch(api: Any, headers: dict[str, str]) -> tuple[str, str, str]:
    """A file, a job and a batch of the project `headers` belongs to: (file, job, batch) ids."""
    file_id = await api.uploaded_file(headers=headers)
    r = await api.post(
        "/api/v1/jobs",
        {
            "input_dataset": file_id,
            "endpoint": CHAT,
            "completion_window": "24h",
            "model_id": api.model_id,
            "model_template_name": api.template_name,
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    r = await api.post(
        "/v1/batches",
        {
            "input_file_id": file_id,
            "endpoint": CHAT,
            "completion_window": "24h",
            "metadata": {"neobatch.template_name": api.template_name},
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    return file_id, job_id, r.json()["id"]


def _ids(body: dict[str, Any], key: str = "data") -> set[str]:
    return {row["id"] for row in body[key]}


async def test_operator_lists_and_reads_every_project(api: Any) -> None:
    await api.ready_template()
    _, alpha = await api.new_key("alpha")
    _, beta = await api.new_key("beta")
    _, ops = await api.new_key("ops", operator=True)
    a_file, a_job, a_batch = await _job_and_batch(api, alpha)
    b_file, b_job, b_batch = await _job_and_batch(api, beta)

    lists = [
        ("/api/v1/jobs", "jobs", a_job, b_job),
        ("/v1/batches", "data", a_batch, b_batch),
        ("/api/v1/files", "data", a_file, b_file),
        ("/v1/files", "data", a_file, b_file),
    ]
    for path, key, a_id, b_id in lists:
        r = await api.get(path, headers=ops)
        assert r.status_code == 200, r.text
        assert {a_id, b_id} <= _ids(r.json(), key), (path, r.text)
        # Project keys: their own rows only, never the other project's.
        r = await api.get(path, headers=alpha)
        assert a_id in _ids(r.json(), key) and b_id not in _ids(r.json(), key), (path, r.text)
        r = await api.get(path, headers=beta)
        assert b_id in _ids(r.json(), key) and a_id not in _ids(r.json(), key), (path, r.text)
        # A cursor is scoped to what the caller may see: another project's id is unknown.
        r = await api.get(f"{path}?after={b_id}", headers=alpha)
        assert (r.status_code, r.json()[key], r.json()["has_more"]) == (200, [], False)
        # The operator pages through everything: one row per page, both projects reached.
        seen: set[str] = set()
        after = ""
        for _ in range(10):
            r = await api.get(f"{path}?limit=1{after}", headers=ops)
            seen |= _ids(r.json(), key)
            if not r.json()["has_more"]:
                break
            after = f"&after={r.json()['last_id']}"
        assert {a_id, b_id} <= seen, path

    for prefix in ("/api/v1/files", "/v1/files"):
        for file_id in (a_file, b_file):
            r = await api.get(f"{prefix}/{file_id}", headers=ops)
            assert (r.status_code, r.json()["id"]) == (200, file_id), r.text
            r = await api.get(f"{prefix}/{file_id}/content", headers=ops)
            assert (r.status_code, r.content) == (200, api.sample_jsonl)
        r = await api.get(f"{prefix}/{b_file}", headers=alpha)
        assert (r.status_code, r.json()["code"]) == (404, "file_not_found")
        r = await api.get(f"{prefix}/{b_file}/content", headers=alpha)
        assert (r.status_code, r.json()["code"]) == (404, "file_not_found")
    assert (await api.get(f"/api/v1/jobs/{b_job}", headers=ops)).status_code == 200
    assert (await api.get(f"/v1/batches/{a_batch}", headers=ops)).status_code == 200
    assert (await api.get(f"/api/v1/jobs/{b_job}", headers=alpha)).status_code == 404


# --- quotas over HTTP -----------------------------------------------------------------------


async def test_project_keys_cannot_touch_quotas_or_keys(api: Any) -> None:
    _, other = await api.new_key("other")
    for headers in (other, api.auth):
        calls = [
            api.client.get("/api/v1/projects/other/quotas", headers=headers),
            api.client.put(
                "/api/v1/projects/other/quotas", json={"max_queued_jobs": 99}, headers=headers
            ),
            api.client.get("/api/v1/keys", headers=headers),
            api.client.post("/api/v1/keys", json={"project": "other"}, headers=headers),
            api.client.delete("/api/v1/keys/key_operator", headers=headers),
        ]
        for call in calls:
            r = await call
            assert (r.status_code, r.json()["code"]) == (403, "operator_only"), r.text
    assert await api.count("project_quotas") == 0
    assert await api.count("api_keys", {"revoked_at": {"$ne": None}}) == 0
    assert await api.count("api_keys", {"project": "other"}) == 1


async def test_a_quota_put_changes_what_a_create_may_do(api: Any) -> None:
    await api.ready_template()
    path = "/api/v1/projects/default/quotas"
    r = await api.client.put(path, json={"max_queued_jobs": 1}, headers=api.operator)
    assert r.status_code == 200, r.text
    assert r.json() == {"project": "default", "max_queued_jobs": 1, "max_machines": None}
    assert (await api.post("/api/v1/jobs", await api.job_request())).status_code == 200
    r = await api.post("/api/v1/jobs", await api.job_request())
    assert (r.status_code, r.json()["code"]) == (429, "quota_exceeded"), r.text

    r = await api.client.put(
        path, json={"max_queued_jobs": 5, "max_machines": 2}, headers=api.operator
    )
    assert r.status_code == 200, r.text
    assert (await api.post("/api/v1/jobs", await api.job_request())).status_code == 200
    r = await api.client.get(path, headers=api.operator)
    assert r.json() == {"project": "default", "max_queued_jobs": 5, "max_machines": 2}
    doc = await api.db["project_quotas"].find_one({"_id": "default"})
    assert (doc["max_queued_jobs"], doc["max_machines"]) == (5, 2)

    # null clears an override: the field is gone from the document the planner reads.
    r = await api.client.put(path, json={"max_machines": None}, headers=api.operator)
    assert r.json() == {"project": "default", "max_queued_jobs": None, "max_machines": None}
    assert await api.db["project_quotas"].find_one({"_id": "default"}) == {"_id": "default"}

    for bad in ({"max_queued_jobs": -1}, {"max_machines": 2**63}, {"max_queued_jobs": "x"}):
        r = await api.client.put(path, json=bad, headers=api.operator)
        assert r.status_code == 400, r.text
    r = await api.client.put("/api/v1/projects/bad%20name/quotas", json={}, headers=api.operator)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_project"), r.text


# --- keys over HTTP -------------------------------------------------------------------------


async def test_operator_creates_lists_and_revokes_keys(api: Any) -> None:
    r = await api.client.post(
        "/api/v1/keys", json={"project": "gamma", "name": "ci"}, headers=api.operator
    )
    assert r.status_code == 200, r.text
    created = r.json()
    assert (created["project"], created["role"], created["name"]) == ("gamma", "project", "ci")
    key = created["api_key"]
    stored = await api.db["api_keys"].find_one({"_id": created["id"]})
    assert key not in str(stored)  # only its hash
    headers = {"Authorization": f"Bearer {key}"}

    # The new key works, in its project only.
    file_id = await api.uploaded_file(headers=headers)
    r = await api.get("/v1/files", headers=headers)
    assert [f["id"] for f in r.json()["data"]] == [file_id]
    assert (await api.get(f"/v1/files/{file_id}")).status_code == 404  # default project

    r = await api.client.post(
        "/api/v1/keys", json={"project": "gamma", "operator": True}, headers=api.operator
    )
    ops_key = r.json()["api_key"]
    r = await api.client.get("/api/v1/keys", headers={"Authorization": f"Bearer {ops_key}"})
    assert r.status_code == 200, r.text
    listed = {k["id"]: k for k in r.json()["data"]}
    assert (
        listed[created["id"]]["role"] == "project" and listed[created["id"]]["revoked_at"] is None
    )
    assert {k["role"] for k in listed.values()} == {"project", "operator"}
    for secret in (key, ops_key, api.auth["Authorization"][7:], "hash"):
        assert secret not in r.text

    r = await api.client.delete(f"/api/v1/keys/{created['id']}", headers=api.operator)
    assert (r.status_code, r.json()) == (200, {"id": created["id"], "revoked": True})
    r = await api.get("/v1/files", headers=headers)
    assert r.status_code == 401, r.text
    r = await api.client.get("/api/v1/keys", headers=api.operator)
    assert {k["id"]: k for k in r.json()["data"]}[created["id"]]["revoked_at"] is not None
    r = await api.client.delete("/api/v1/keys/key_nope", headers=api.operator)
    assert (r.status_code, r.json()["code"]) == (404, "key_not_found")
    for bad in ({"project": ""}, {"project": "a b"}, {"project": "x", "operator": "yes"}, {}):
        r = await api.client.post("/api/v1/keys", json=bad, headers=api.operator)
        assert r.status_code == 400, r.text


async def test_the_key_list_is_a_bounded_page(api: Any) -> None:
    """`GET /api/v1/keys` answered every key ever made in one body."""
    made = []
    for n in range(23):
        r = await api.client.post(
            "/api/v1/keys", json={"project": "paged", "name": f"k{n:02d}"}, headers=api.operator
        )
        made.append(r.json()["id"])
    total = await api.count("api_keys")
    first = (await api.client.get("/api/v1/keys", headers=api.operator)).json()
    assert len(first["data"]) == 20 and first["has_more"] is True
    assert first["object"] == "list" and first["last_id"] == first["data"][-1]["id"]
    r = await api.client.get(
        "/api/v1/keys", params={"after": first["last_id"]}, headers=api.operator
    )
    rest = r.json()
    assert len(rest["data"]) == total - 20 and rest["has_more"] is False
    listed = [k["id"] for k in first["data"] + rest["data"]]
    assert len(set(listed)) == total and set(made) <= set(listed)  # every key once
    assert listed.index(made[-1]) < listed.index(made[0])  # newest first, like every list
    small = await api.client.get("/api/v1/keys", params={"limit": 2}, headers=api.operator)
    assert [k["id"] for k in small.json()["data"]] == listed[:2]
    r = await api.client.get("/api/v1/keys", params={"limit": 101}, headers=api.operator)
    assert r.status_code == 400, r.text
    r = await api.client.get("/api/v1/keys", params={"after": "key_nope"}, headers=api.operator)
    assert (r.status_code, r.json()["data"], r.json()["has_more"]) == (200, [], False)
