"""Job creation, reading, listing and cancelling against a real Mongo-wire server and a real
nats-server: every accepted job is a queued document plus `job.queued` on the stream; every
rejected request leaves neither behind."""

from __future__ import annotations

from typing import Any

import pytest

from neobatch.common.contracts import JobCancelRequested, JobQueued, JobStatusChanged
from neobatch.common.outbox import OUTBOX


async def test_create_job_stores_a_queued_job_and_publishes_job_queued(api: Any) -> None:
    await api.ready_template()
    body = await api.job_request(metadata={"team": "search"}, resource_request={"replicas": 0})
    r = await api.post("/api/v1/jobs", body)
    assert r.status_code == 200, r.text
    view = r.json()
    job_id = view["id"]
    assert job_id.startswith("job_") and view["batch_id"].startswith("batch_")
    assert view["status"] == "queued" and view["object"] == "batch"
    assert view["model"] == "qwen-7b"  # the model's serving_name wins over model_source.uri
    assert [e["id"] for e in view["events"]] == ["queued"]

    doc = await api.db["jobs"].find_one({"_id": job_id})
    assert doc["status"] == "queued" and doc["batch_id"] == view["batch_id"]
    assert doc["completion_window_seconds"] == 24 * 3600
    assert doc["resource_request"]["replicas"] == 1
    assert doc["template_spec"]["engine"]["command"][0] == "python"
    assert doc["template_spec"]["engine"]["port"] == 8011
    assert "an_aibrix_field_we_ignore" not in doc["template_spec"]
    assert doc["created_by"] == "key_dev" and doc["project"] == "default"
    assert "nb-test-key" not in str(doc) and doc["request_counts"]["total"] == 2
    assert doc["queued_at"] is not None and doc["metadata"] == {"team": "search"}

    subjects = sorted(e["subject"] for e in await api.db[OUTBOX].find().to_list(None))
    assert subjects == [api.ns.subject(JobQueued), api.ns.subject(JobStatusChanged)]
    queued = await api.next_event(JobQueued)
    assert queued.job_id == job_id
    changed = await api.next_event(JobStatusChanged)
    assert (changed.job_id, changed.old_status, changed.new_status) == (job_id, None, "queued")
    assert changed.job_version == doc["version"] == 1


async def test_default_template_and_latest_active_version_are_used(api: Any) -> None:
    await api.ready_template()
    newer = api.template_body(version="v1.10.0")
    newer["spec"]["accelerator"]["count"] = 2
    assert (
        await api.post_operator(f"/api/v1/models/{api.model_id}/deployment-templates", newer)
    ).is_success
    # "Latest" is the highest version in AIBrix's numeric order, whatever was created last.
    older = api.template_body(version="v1.9.0")
    assert (
        await api.post_operator(f"/api/v1/models/{api.model_id}/deployment-templates", older)
    ).is_success
    draft = api.template_body(version="v3.0.0", status="draft")
    assert (
        await api.post_operator(f"/api/v1/models/{api.model_id}/deployment-templates", draft)
    ).is_success

    body = await api.job_request(model_template_version="")
    view = (await api.post("/api/v1/jobs", body)).json()
    assert view["model_template_version"] == "v1.10.0"

    pinned = (
        await api.post("/api/v1/jobs", await api.job_request(model_template_version="v1.0.0"))
    ).json()
    assert pinned["model_template_version"] == "v1.0.0"


async def _assert_nothing_created(api: Any) -> None:
    assert await api.count("jobs") == 0
    assert await api.count(OUTBOX) == 0


async def test_malformed_json_body_is_400_invalid_json(api: Any) -> None:
    await api.ready_template()
    r = await api.client.post(
        "/api/v1/jobs",
        content=b'{"input_dataset": "file_x", ',
        headers={
            "Authorization": "Bearer nb-test-key-0123456789",
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_json"
    assert "not valid JSON" in r.json()["message"]
    await _assert_nothing_created(api)


@pytest.mark.parametrize(
    ("overrides", "status", "code", "names"),
    [
        ({"input_dataset": None}, 400, "invalid_request", "input_dataset"),
        ({"endpoint": None}, 400, "invalid_request", "endpoint"),
        ({"input_dataset": "file_missing"}, 400, "file_not_found", "input_dataset"),
        ({"model_template_name": "nope"}, 400, "template_not_found", "model_template_name"),
        ({"model_template_version": "v9"}, 400, "template_not_found", "model_template_name"),
        ({"model_id": "model-ghost"}, 400, "model_not_found", "model_id"),
        ({"model_template_name": ""}, 400, "template_not_found", "model_template_name"),
        ({"endpoint": "/v1/embeddings"}, 422, "unsupported_endpoint", "endpoint"),
        ({"completion_window": "2x"}, 400, "invalid_request", "completion_window"),
        ({"completion_window": "0h"}, 400, "invalid_request", "completion_window"),
        # Shorter than NEOBATCH_MIN_COMPLETION_WINDOW_SECONDS (60 by default).
        ({"completion_window": "59s"}, 400, "invalid_request", "completion_window"),
        (
            {"resource_request": {"replicas": 1025}},
            400,
            "invalid_request",
            "resource_request.replicas",
        ),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "invalid_request", "metadata"),
        ({"metadata": {"k" * 65: "v"}}, 400, "invalid_request", "metadata"),
        ({"metadata": {"k": "v" * 513}}, 400, "invalid_request", "metadata"),
        # AIBrix's `client` ranges, checked before anything is leased.
        ({"client": {"max_concurrency": 0}}, 400, "invalid_request", "client.max_concurrency"),
        ({"client": {"max_concurrency": 1025}}, 400, "invalid_request", "client.max_concurrency"),
        (
            {"client": {"request_timeout_seconds": 0.5}},
            400,
            "invalid_request",
            "client.request_timeout_seconds",
        ),
        (
            {"client": {"retry_policy": {"max_retries": -1}}},
            400,
            "invalid_request",
            "client.retry_policy.max_retries",
        ),
        ({"client": {"max_concurency": 8}}, 400, "invalid_request", "max_concurency"),
    ],
)
async def test_bad_job_request_is_a_json_error_and_creates_nothing(
    api: Any, overrides: dict[str, Any], status: int, code: str, names: str
) -> None:
    await api.ready_template()
    body = await api.job_request()
    for key, value in overrides.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    r = await api.post("/api/v1/jobs", body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"code", "message"}
    assert r.json()["code"] == code
    assert names in r.json()["message"]
    await _assert_nothing_created(api)


async def test_non_jsonl_upload_then_job_on_it_creates_nothing(api: Any) -> None:
    await api.ready_template()
    up = await api.upload(b"not json at all\n", filename="batch.jsonl")
    assert up.status_code == 400 and up.json()["code"] == "invalid_file"
    # The rejected upload never got an id, so a job can only name an id that does not exist.
    body = await api.job_request(input_dataset="file_never_stored")
    r = await api.post("/api/v1/jobs", body)
    assert r.status_code == 400 and r.json()["code"] == "file_not_found"
    await _assert_nothing_created(api)


async def test_get_job_view_has_the_aibrix_shape(api: Any) -> None:
    await api.ready_template()
    created = (await api.post("/api/v1/jobs", await api.job_request())).json()
    r = await api.get(f"/api/v1/jobs/{created['id']}")
    assert r.status_code == 200
    view = r.json()
    for key in (
        "id",
        "object",
        "status",
        "batch_id",
        "provision_id",
        "provision",
        "events",
        "input_dataset",
        "output_dataset",
        "error_dataset",
        "request_counts",
        "error_message",
        "endpoint",
        "model",
        "name",
        "completion_window",
        "created_at",
        "queued_at",
        "metadata",
        "model_template_name",
        "model_template_version",
        "created_by",
    ):
        assert key in view, key
    assert view["request_counts"] == {"total": 2, "completed": 0, "failed": 0}
    assert view["model_template_name"] == api.template_name
    assert view["provision"] is None and view["provision_id"] is None
    assert isinstance(view["created_at"], int) and view["created_at"] == view["queued_at"]
    assert view["events"] == [
        {
            "id": "queued",
            "label": "Queued",
            "status": "queued",
            "source": "console",
            "at": view["queued_at"],
            "message": "Console accepted the job.",
        }
    ]


async def test_job_view_shows_its_provision_with_the_endpoint_for_the_owner(api: Any) -> None:
    await api.ready_template()
    created = (await api.post("/api/v1/jobs", await api.job_request())).json()
    job = await api.db["jobs"].find_one({"_id": created["id"]})
    await api.db["provisions"].insert_one(
        {
            "_id": "prov_1",
            "job_id": created["id"],
            "provider": "ssh",
            "status": "running",
            "endpoint": {"host": "127.0.0.1", "port": 2222, "username": "u", "private_key": "x"},
            "error_message": "",
            "created_at": job["created_at"],
            "updated_at": job["created_at"],
        }
    )
    await api.db["jobs"].update_one(
        {"_id": created["id"]},
        {
            "$set": {
                "provision_id": "prov_1",
                "status": "resource_preparing",
                "resource_preparing_at": job["created_at"],
            }
        },
    )
    view = (await api.get(f"/api/v1/jobs/{created['id']}")).json()
    assert view["provision"]["provision_id"] == "prov_1"
    assert view["provision"]["status"] == "running"
    assert view["provision"]["endpoint"] == {"host": "127.0.0.1", "port": 2222, "username": "u"}
    assert [e["id"] for e in view["events"]] == ["queued", "resource_preparing"]
    listed = (await api.get("/api/v1/jobs")).json()
    assert listed["jobs"][0]["provision"]["provision_id"] == "prov_1"


async def test_unknown_job_is_404_json(api: Any) -> None:
    for method, path in (
        ("get", "/api/v1/jobs/job_nope"),
        ("post", "/api/v1/jobs/job_nope/cancel"),
    ):
        r = await getattr(api, method)(path)
        assert r.status_code == 404
        assert r.json()["code"] == "job_not_found"


async def test_list_jobs_is_newest_first_and_pages(api: Any) -> None:
    await api.ready_template()
    ids = [(await api.post("/api/v1/jobs", await api.job_request())).json()["id"] for _ in range(3)]
    first = (await api.get("/api/v1/jobs", params={"limit": 2})).json()
    assert first["has_more"] is True and len(first["jobs"]) == 2
    second = (
        await api.get("/api/v1/jobs", params={"limit": 2, "after": first["jobs"][-1]["id"]})
    ).json()
    assert second["has_more"] is False
    seen = [j["id"] for j in first["jobs"] + second["jobs"]]
    assert sorted(seen) == sorted(ids) and len(set(seen)) == 3
    created = [j["created_at"] for j in first["jobs"] + second["jobs"]]
    assert created == sorted(created, reverse=True)
    bad = await api.get("/api/v1/jobs", params={"limit": 0})
    assert bad.status_code == 400 and "limit" in bad.json()["message"]


async def test_cancel_of_a_queued_job_records_the_request_once_and_emits_it(api: Any) -> None:
    await api.ready_template()
    job_id = (await api.post("/api/v1/jobs", await api.job_request())).json()["id"]
    r = await api.post(f"/api/v1/jobs/{job_id}/cancel", {})
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["status"] == "queued"  # the planner moves it on
    assert view["cancel_requested_at"] is not None
    assert [e["id"] for e in view["events"]] == ["queued", "cancel_requested"]
    doc = await api.db["jobs"].find_one({"_id": job_id})
    assert doc["cancel_requested_at"] is not None

    event = await api.next_event(JobCancelRequested)
    assert event.job_id == job_id

    again = await api.post(f"/api/v1/jobs/{job_id}/cancel", {})
    assert again.status_code == 200
    assert again.json()["cancel_requested_at"] == view["cancel_requested_at"]
    assert await api.count(OUTBOX, {"subject": api.ns.subject(JobCancelRequested)}) == 1


async def test_cancel_of_a_terminal_job_changes_nothing(api: Any) -> None:
    await api.ready_template()
    job_id = (await api.post("/api/v1/jobs", await api.job_request())).json()["id"]
    await api.db["jobs"].update_one(
        {"_id": job_id}, {"$set": {"status": "completed", "completed_at": None}}
    )
    before = await api.db["jobs"].find_one({"_id": job_id})
    outbox_before = await api.count(OUTBOX)
    r = await api.post(f"/api/v1/jobs/{job_id}/cancel", {})
    assert r.status_code == 200
    assert r.json()["status"] == "completed" and r.json()["cancel_requested_at"] is None
    assert await api.db["jobs"].find_one({"_id": job_id}) == before
    assert await api.count(OUTBOX) == outbox_before


async def test_input_file_of_another_project_reads_as_missing(api: Any) -> None:
    await api.ready_template()
    body = await api.job_request()
    await api.db["files.files"].update_one(
        {"_id": body["input_dataset"]}, {"$set": {"metadata.project": "elsewhere"}}
    )
    r = await api.post("/api/v1/jobs", body)
    assert r.status_code == 400
    assert r.json()["code"] == "file_not_found" and "input_dataset" in r.json()["message"]
    for path in (
        f"/api/v1/files/{body['input_dataset']}",
        f"/api/v1/files/{body['input_dataset']}/content",
    ):
        assert (await api.get(path)).status_code == 404
    await _assert_nothing_created(api)


async def test_client_block_is_kept_as_given_for_the_agent(api: Any) -> None:
    await api.ready_template()
    client = {
        "max_concurrency": 16,
        "request_timeout_seconds": 90,
        "retry_policy": {"max_retries": 2},
    }
    r = await api.post("/api/v1/jobs", await api.job_request(client=client))
    assert r.status_code == 200, r.text
    doc = await api.db["jobs"].find_one({"_id": r.json()["id"]})
    # Unset fields stay unset (presence-aware, as AIBrix): the agent's defaults apply to them.
    assert doc["client"] == client
