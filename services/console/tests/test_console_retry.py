"""`POST /api/v1/jobs/{id}/retry` (issue 18) against a real Mongo-wire server: the new job's
input holds exactly the failed and unfinished lines, byte for byte and in order; it keeps the
original's choices; the codes for a running job, nothing to retry, another project's job; a
repeated POST makes no second job; the bounds."""

from __future__ import annotations

import json
from typing import Any

from neobatch.common import filestore
from neobatch.common.contracts import JobStatusChanged
from neobatch.common.outbox import OUTBOX


def request_line(custom_id: str, text: str = "hi") -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line).encode()


def result_line(custom_id: str, status: int) -> bytes:
    if status == 200:
        return json.dumps(
            {"id": "r", "custom_id": custom_id, "response": {"status_code": 200, "body": {}}}
        ).encode()
    return json.dumps(
        {"id": "r", "custom_id": custom_id, "response": None,
         "error": {"code": "engine_error", "message": "500"}}
    ).encode()  # fmt: skip


# Six lines, odd spacing and a blank line kept as they are; r2 and r5 fail, r4 and r6 have
# no result (the job was cancelled), r1 and r3 succeed.
LINES = [
    request_line("r1"),
    request_line("r2", "two"),
    b'{"custom_id": "r3", "method": "POST", "url": "/v1/chat/completions", '
    b'"body": {"model": "m", "messages": []}}',
    b'  {"custom_id":"r4","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}  ',
    request_line("r5", "caf\u00e9 \u2603"),
    b"",
    request_line("r6"),
]
INPUT = b"\n".join(LINES) + b"\n"


async def save(api: Any, file_id: str, lines: list[bytes], owner: str = "key_dev") -> str:
    async def chunks() -> Any:
        yield b"".join(line + b"\n" for line in lines)

    await filestore.save_file(
        api.db, file_id, f"{file_id}.jsonl", chunks(), purpose="batch_output", owner=owner
    )
    return file_id


async def ended_job(
    api: Any,
    status: str = "cancelled",
    *,
    content: bytes = INPUT,
    output: list[str] = ("r1", "r3"),  # type: ignore[assignment]
    errors: list[str] = ("r2", "r5"),  # type: ignore[assignment]
    headers: dict[str, str] | None = None,
    **create: Any,
) -> str:
    """A job created through the API, then ended as the planner would end it."""
    headers = headers or api.auth
    body = await api.job_request(input_dataset=await api.uploaded_file(content, headers), **create)
    r = await api.post("/api/v1/jobs", body, headers=headers)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    fields: dict[str, Any] = {"status": status}
    if output:
        fields["output_dataset"] = await save(
            api, f"file_{job_id}_output", [result_line(c, 200) for c in output]
        )
    if errors:
        fields["error_dataset"] = await save(
            api, f"file_{job_id}_error", [result_line(c, 500) for c in errors]
        )
    await api.db["jobs"].update_one({"_id": job_id}, {"$set": fields})
    return job_id


async def content_of(api: Any, file_id: str) -> bytes:
    r = await api.get(f"/api/v1/files/{file_id}/content")
    assert r.status_code == 200, r.text
    return r.content


async def test_retry_copies_exactly_the_failed_and_unfinished_lines(api: Any) -> None:
    await api.ready_template()
    original = await ended_job(
        api, metadata={"team": "search"}, resource_request={"replicas": 2}, max_cost_usd=50.0,
        client={"max_concurrency": 4}, completion_window="2h",
    )  # fmt: skip
    files_before = (await api.get("/api/v1/files", params={"limit": 100})).json()["data"]

    r = await api.post(f"/api/v1/jobs/{original}/retry")
    assert r.status_code == 200, r.text
    retry = r.json()
    assert retry["id"] != original and retry["status"] == "queued"
    assert retry["retry_of"] == original and retry["retried_by"] == []
    # The failed (r2, r5) and unfinished (r4, r6) lines, as they were, in input order.
    expected = b"".join(LINES[i] + b"\n" for i in (1, 3, 4, 6))
    assert await content_of(api, retry["input_dataset"]) == expected
    assert retry["request_counts"]["total"] == 4
    # The original's choices.
    assert retry["metadata"] == {"team": "search"} and retry["completion_window"] == "2h"
    assert retry["resource_request"]["replicas"] == 2 and retry["max_cost_usd"] == 50.0
    assert (retry["model_template_name"], retry["model_template_version"]) == (
        api.template_name, "v1.0.0",
    )  # fmt: skip
    doc = await api.db["jobs"].find_one({"_id": retry["id"]})
    assert doc["client"] == {"max_concurrency": 4} and doc["project"] == "default"
    # The timeline says what it is a retry of, first.
    assert retry["events"][0]["id"] == "retry_of" and original in retry["events"][0]["message"]
    # The new input is a file of the project like an upload.
    files_after = (await api.get("/api/v1/files", params={"limit": 100})).json()["data"]
    [new_file] = [f for f in files_after if f["id"] not in {g["id"] for g in files_before}]
    assert new_file["id"] == retry["input_dataset"] and new_file["purpose"] == "batch"
    assert new_file["bytes"] == len(expected)
    # The original lists it, in its own view and in the list.
    assert (await api.get(f"/api/v1/jobs/{original}")).json()["retried_by"] == [retry["id"]]
    listed = (await api.get("/api/v1/jobs")).json()["jobs"]
    assert {j["id"]: j["retried_by"] for j in listed}[original] == [retry["id"]]
    # The feed says it too.
    changes = [
        e for e in await api.db[OUTBOX].find().to_list(None)
        if e["subject"] == api.ns.subject(JobStatusChanged)
    ]  # fmt: skip
    reasons = [
        json.loads(e["payload"])["reason"] for e in changes if retry["id"] in str(e["payload"])
    ]
    assert reasons == [f"created: a retry of job {original}"]


async def test_overrides_go_through_the_creation_checks(api: Any) -> None:
    await api.ready_template()
    newer = api.template_body(version="v2.0.0")
    assert (
        await api.post_operator(f"/api/v1/models/{api.model_id}/deployment-templates", newer)
    ).is_success
    original = await ended_job(api, "failed")
    offer = {"_id": "ssh:H100@r1", "provider": "ssh", "gpu_type": "H100", "gpu_description": "H100",
             "family": "H100", "gpu_count": 1, "region": "r1", "price_per_hour": 3.6,
             "available": True}  # fmt: skip
    await api.db["offers"].insert_one(offer)
    r = await api.post(
        f"/api/v1/jobs/{original}/retry",
        {"model_template": f"{api.template_name}@v2.0.0", "replicas": 3, "max_cost_usd": 7.5},
    )
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["model_template_version"] == "v2.0.0"
    assert view["resource_request"]["replicas"] == 3 and view["max_cost_usd"] == 7.5
    await api.db["jobs"].update_one({"_id": view["id"]}, {"$set": {"status": "cancelled"}})
    # An unknown template, too many machines, an unknown key: the creation path's codes, and
    # no job or file left behind.
    jobs, files = await api.count("jobs"), await api.count("files.files")
    for body, status, code in (
        ({"model_template": "nope"}, 400, "template_not_found"),
        ({"model_template": "@v1"}, 400, None),
        ({"model_template": "a@b@c"}, 400, None),
        ({"replicas": 17}, 400, "replicas_above_maximum"),
        ({"replicas": 0}, 400, None),
        ({"max_cost": 1}, 400, None),
        ({"max_cost_usd": 0.0000001}, 422, "quote_exceeds_max_cost"),
    ):
        r = await api.post(f"/api/v1/jobs/{original}/retry", body)
        assert r.status_code == status, (body, r.text)
        assert code is None or r.json()["code"] == code, r.text
    assert (await api.count("jobs"), await api.count("files.files")) == (jobs, files)


async def test_only_an_ended_job_with_something_left_can_be_retried(api: Any) -> None:
    await api.ready_template()
    running = await ended_job(api, "in_progress")
    r = await api.post(f"/api/v1/jobs/{running}/retry")
    assert r.status_code == 409 and r.json()["code"] == "job_not_terminal", r.text
    done = await ended_job(api, "completed", output=["r1", "r2", "r3", "r4", "r5", "r6"],
                           errors=[])  # fmt: skip
    r = await api.post(f"/api/v1/jobs/{done}/retry")
    assert r.status_code == 409 and r.json()["code"] == "nothing_to_retry", r.text
    assert await api.count("files.files", {"filename": f"retry-of-{done}.jsonl"}) == 0
    # A job that failed before running (resource_failed): every line has no result.
    never_ran = await ended_job(api, "resource_failed", output=[], errors=[])
    r = await api.post(f"/api/v1/jobs/{never_ran}/retry")
    assert r.status_code == 200, r.text
    assert await content_of(api, r.json()["input_dataset"]) == b"".join(
        line + b"\n" for line in LINES if line
    )
    jobs_before = await api.count("jobs")
    r = await api.post("/api/v1/jobs/job_doesnotexist/retry")
    assert r.status_code == 404 and r.json()["code"] == "job_not_found"
    # A result file deleted: which lines succeeded is unknown, nothing is re-run.
    gone = await ended_job(api, "cancelled")
    await filestore.delete_file(api.db, f"file_{gone}_output")
    r = await api.post(f"/api/v1/jobs/{gone}/retry")
    assert r.status_code == 409 and r.json()["code"] == "result_file_deleted", r.text
    assert await api.count("files.files", {"filename": f"retry-of-{gone}.jsonl"}) == 0
    assert await api.count("jobs") == jobs_before + 1


async def test_another_projects_job_is_not_found(api: Any) -> None:
    await api.ready_template()
    _, other = await api.new_key("other")
    original = await ended_job(api, "failed")
    for headers in (other, (await api.new_key("other", operator=True))[1]):
        r = await api.post(f"/api/v1/jobs/{original}/retry", headers=headers)
        assert r.status_code == 404 and r.json()["code"] == "job_not_found", r.text
    assert await api.count("jobs", {"retry_of": original}) == 0


async def test_a_repeated_post_makes_no_second_job(api: Any) -> None:
    await api.ready_template()
    original = await ended_job(api, "expired")
    first = await api.post(f"/api/v1/jobs/{original}/retry")
    again = await api.post(f"/api/v1/jobs/{original}/retry", {})
    assert first.status_code == again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    same = ("input_dataset", "model_template_name", "request_counts", "retry_of", "events")
    assert {k: again.json()[k] for k in same} == {k: first.json()[k] for k in same}
    # Asked otherwise while it runs: refused, naming it.
    other = await api.post(f"/api/v1/jobs/{original}/retry", {"replicas": 2})
    assert other.status_code == 409 and other.json()["code"] == "retry_in_progress"
    assert await api.count("jobs", {"retry_of": original}) == 1
    # Once it ended, a new retry may be made.
    await api.db["jobs"].update_one({"_id": first.json()["id"]}, {"$set": {"status": "cancelled"}})
    second = await api.post(f"/api/v1/jobs/{original}/retry", {"replicas": 2})
    assert second.status_code == 200 and second.json()["id"] != first.json()["id"]
    view = (await api.get(f"/api/v1/jobs/{original}")).json()
    assert view["retried_by"] == [first.json()["id"], second.json()["id"]]


async def test_an_idempotency_key_answers_the_job_it_made(api: Any) -> None:
    await api.ready_template()
    original = await ended_job(api, "failed")
    keyed = {**api.auth, "Idempotency-Key": "retry-7f3a"}
    first = await api.post(f"/api/v1/jobs/{original}/retry", headers=keyed)
    assert first.status_code == 200, first.text
    # Even after it ended (the running-retry rule no longer answers it), the key does.
    await api.db["jobs"].update_one({"_id": first.json()["id"]}, {"$set": {"status": "failed"}})
    files = await api.count("files.files")
    again = await api.post(f"/api/v1/jobs/{original}/retry", headers=keyed)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert await api.count("files.files") == files
    # The key on another job's retry is a conflict, not that job.
    other = await ended_job(api, "failed")
    r = await api.post(f"/api/v1/jobs/{other}/retry", headers=keyed)
    assert r.status_code == 409 and r.json()["code"] == "idempotency_key_reused", r.text
    # Another project's same key is its own.
    _, other_project = await api.new_key("other")
    theirs = await ended_job(api, "failed", headers=other_project)
    r = await api.post(f"/api/v1/jobs/{theirs}/retry",
                       headers={**other_project, "Idempotency-Key": "retry-7f3a"})  # fmt: skip
    assert r.status_code == 200 and r.json()["id"] != first.json()["id"], r.text
    bad = await api.post(f"/api/v1/jobs/{other}/retry",
                         headers={**api.auth, "Idempotency-Key": "x" * 129})  # fmt: skip
    assert bad.status_code == 400


async def test_a_job_is_retried_at_most_a_bounded_number_of_times(api: Any) -> None:
    from neobatch.console.jobs.retry_rules import MAX_RETRIES_PER_JOB

    await api.ready_template()
    original = await ended_job(api, "failed")
    made = []
    for _ in range(MAX_RETRIES_PER_JOB):
        r = await api.post(f"/api/v1/jobs/{original}/retry")
        assert r.status_code == 200, r.text
        made.append(r.json()["id"])
        await api.db["jobs"].update_one({"_id": made[-1]}, {"$set": {"status": "failed"}})
    r = await api.post(f"/api/v1/jobs/{original}/retry")
    assert r.status_code == 409 and r.json()["code"] == "too_many_retries", r.text
    assert (await api.get(f"/api/v1/jobs/{original}")).json()["retried_by"] == made


async def test_concurrent_posts_make_one_retry_and_leave_no_stray_file(api: Any) -> None:
    import asyncio

    await api.ready_template()
    original = await ended_job(api, "failed")
    answers = await asyncio.gather(*(api.post(f"/api/v1/jobs/{original}/retry") for _ in range(4)))
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert len({r.json()["input_dataset"] for r in answers}) == 1
    assert await api.count("jobs", {"retry_of": original}) == 1
    assert await api.count("files.files", {"filename": f"retry-of-{original}.jsonl"}) == 1
