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
