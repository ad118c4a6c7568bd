"""Issue 15 at the console: how many machines a job asks for, and the machines it shows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

CHAT = "/v1/chat/completions"


async def _template_with_default(api: Any, replicas: int) -> None:
    await api.ready_template()
    body = api.template_body(name="wide", version="v1")
    body["spec"]["replicas"] = replicas
    r = await api.post(
        f"/api/v1/models/{api.model_id}/deployment-templates", body, headers=api.operator
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("asked", "template_default", "stored"),
    [
        (None, None, 1),  # nothing said anywhere: one machine, as before
        (0, None, 1),  # AIBrix: 0 means the default
        (3, None, 3),
        (None, 4, 4),  # the template's default
        (2, 4, 2),  # the job's own wins
        (None, 40, 16),  # a template default is held to the operator's maximum
        (16, None, 16),  # the maximum itself is fine
    ],
)
async def test_replicas_come_from_the_job_else_the_template_else_one(
    api: Any, asked: int | None, template_default: int | None, stored: int
) -> None:
    if template_default is None:
        await api.ready_template()
        body = await api.job_request()
    else:
        await _template_with_default(api, template_default)
        body = await api.job_request(model_template_name="wide")
    if asked is not None:
        body["resource_request"] = {"replicas": asked}
    r = await api.post("/api/v1/jobs", body)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["resource_request"]["replicas"] == stored
    assert job["machines"] == {"requested": stored, "running": 0, "released": 0, "items": []}
    doc = await api.db.jobs.find_one({"_id": job["id"]})
    assert doc["resource_request"]["replicas"] == stored


async def test_replicas_above_the_operator_maximum_is_a_400_and_creates_nothing(api: Any) -> None:
    await api.ready_template()
    body = await api.job_request(resource_request={"replicas": 17})
    r = await api.post("/api/v1/jobs", body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "replicas_above_maximum"
    assert "16" in r.json()["message"]
    assert await api.count("jobs") == 0
    capabilities = (await api.get("/api/v1/config/job-capabilities")).json()
    assert capabilities["resource_request"] == {"min_replicas": 1, "max_replicas": 16}


async def _batch(api: Any, aibrix: dict[str, Any]) -> Any:
    file_id = await api.uploaded_file()
    body = {
        "input_file_id": file_id,
        "endpoint": CHAT,
        "completion_window": "24h",
        "metadata": {"neobatch.template_name": api.template_name},
        "aibrix": aibrix,
    }
    return await api.post("/v1/batches", body)


async def test_the_openai_api_asks_for_machines_through_the_aibrix_extra_body(api: Any) -> None:
    await api.ready_template()
    r = await _batch(api, {"replicas": 4, "client": {"max_concurrency": 8}})
    assert r.status_code == 200, r.text
    batch = r.json()
    assert batch["neobatch_machines"]["requested"] == 4
    doc = await api.db.jobs.find_one({"batch_id": batch["id"]})
    assert doc["resource_request"]["replicas"] == 4
    assert doc["client"] == {"max_concurrency": 8}

    r = await _batch(api, {"replicas": 100})
    assert r.status_code == 400 and r.json()["code"] == "replicas_above_maximum", r.text
    r = await _batch(api, {"replicas": 1025})  # past AIBrix's own bound: the schema's 400
    assert r.status_code == 400 and r.json()["code"] == "invalid_request", r.text
    assert await api.count("jobs") == 1


async def test_the_job_shows_each_machine_its_provider_price_and_share(api: Any) -> None:
    await api.ready_template()
    r = await api.post("/api/v1/jobs", await api.job_request(resource_request={"replicas": 3}))
    job = r.json()
    now = datetime.now(UTC)
    lease = {"gpu_type": "NVIDIA A100", "gpu_count": 1, "region": "r", "price_per_hour": 1.5}
    provisions = [
        {"_id": f"prov_x_{n}", "job_id": job["id"], "provider": provider, "status": status}
        for n, provider, status in [
            (1, "runpod", "running"),
            (2, "lambdaCloud", "released"),
            (3, "runpod", "failed"),
        ]
    ]
    for p in provisions[:2]:
        p.update(lease=lease, leased_at=now, running_at=now, created_at=now)
    await api.db.provisions.insert_many(provisions)
    await api.db.jobs.update_one(
        {"_id": job["id"]},
        {"$set": {"provision_id": "prov_x_1", "machine_lines": {"prov_x_1": 7, "prov_x_2": 5}}},
    )
    view = (await api.get(f"/api/v1/jobs/{job['id']}")).json()
    machines = view["machines"]
    assert (machines["requested"], machines["running"], machines["released"]) == (3, 1, 1)
    assert [
        (m["provision_id"], m["provider"], m["status"], m["lines"], m["price_per_hour"])
        for m in machines["items"]
    ] == [
        ("prov_x_1", "runpod", "running", 7, 1.5),
        ("prov_x_2", "lambdaCloud", "released", 5, 1.5),
        ("prov_x_3", "runpod", "failed", 0, None),
    ]
    assert machines["items"][0]["gpu_type"] == "NVIDIA A100"
    # The bill sums every machine that was leased; the OpenAI batch carries both as extras.
    assert [m["provision_id"] for m in view["bill"]["machines"]] == ["prov_x_1", "prov_x_2"]
    batch = (await api.get(f"/v1/batches/{view['batch_id']}")).json()
    assert batch["neobatch_machines"] == machines
    assert len(batch["neobatch_bill"]["machines"]) == 2
