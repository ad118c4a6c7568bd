"""Deployment templates no tenant can hijack (issue 13 findings 1 and 2): published by operators,
resolved in the caller's scope, launch fields validated, versions deprecated and deleted, and
the plain OpenAI SDK's batch (no metadata) run on the template of the model its lines name."""

from __future__ import annotations

import json
from typing import Any

import pytest

CHAT = "/v1/chat/completions"
DEMO_MODEL = "model-sim-chat-1b"
DEMO_TEMPLATE = "sim-chat-demo"
OPERATOR_COMMAND = ["python", "-m", "neobatch.sim.engine", "--port", "{port}"]


def lines(*models: str) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": CHAT,
                "body": {"model": model, "messages": [{"role": "user", "content": "secret"}]},
            }
        ).encode()
        + b"\n"
        for i, model in enumerate(models)
    )


async def publish_demo(api: Any) -> str:
    """What the README's example runs on: model `sim-chat-1b`, template sim-chat-demo v1.0.0."""
    r = await api.post_operator(
        "/api/v1/models", {"name": "Sim Chat 1B", "serving_name": "sim-chat-1b"}
    )
    assert r.status_code == 200, r.text
    body = api.template_body(name=DEMO_TEMPLATE)
    r = await api.post_operator(f"/api/v1/models/{DEMO_MODEL}/deployment-templates", body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


async def test_the_readme_template_cannot_be_hijacked_through_either_api(api: Any) -> None:
    published = await publish_demo(api)
    _, attacker = await api.new_key("other")
    evil = api.template_body(name=DEMO_TEMPLATE, version="v1.0.0")
    evil["spec"]["engine"]["command"] = ["sh", "-c", "cat /root/.ssh/* > /tmp/loot"]
    # The attack of the issue: its own model serving the same name, and a same-named template.
    r = await api.post(
        "/api/v1/models", {"name": "Evil", "serving_name": "sim-chat-1b"}, headers=attacker
    )
    assert (r.status_code, r.json()["code"]) == (403, "operator_only")
    for model_id in (DEMO_MODEL, "model-evil"):
        r = await api.post(
            f"/api/v1/models/{model_id}/deployment-templates", evil, headers=attacker
        )
        assert r.status_code == 403, r.text
    assert await api.count("templates") == 1 and await api.count("models") == 1

    # Even a private template of the attacker's project (stored as if it had been allowed, with
    # the published name: a race past the create check) is never the victim's.
    doc = {**(await api.db["templates"].find_one({"_id": published}))}
    doc.update(_id="tmpl_evil", project="other", version="v9.0.0")
    doc["spec"]["engine"]["command"] = evil["spec"]["engine"]["command"]
    await api.db["templates"].insert_one(doc)

    file_id = await api.uploaded_file(lines("sim-chat-1b", "sim-chat-1b"))
    metadata = {"neobatch.template_name": DEMO_TEMPLATE, "neobatch.template_version": "v1.0.0"}
    for path, body in (
        ("/v1/batches", {"input_file_id": file_id, "endpoint": CHAT, "metadata": metadata}),
        ("/v1/batches", {"input_file_id": file_id, "endpoint": CHAT}),
        (
            "/api/v1/jobs",
            {"input_dataset": file_id, "endpoint": CHAT, "model_template_name": DEMO_TEMPLATE},
        ),
        ("/api/v1/jobs", {"input_dataset": file_id, "endpoint": CHAT}),
    ):
        r = await api.post(path, body)
        assert r.status_code == 200, (path, r.text)
        key = "batch_id" if path == "/v1/batches" else "_id"
        job = await api.db["jobs"].find_one({key: r.json()["id"]})
        assert job["model_template_id"] == published, (path, body)
        assert job["template_spec"]["engine"]["command"] == OPERATOR_COMMAND
    # The attacker's own project resolves its own template first; nobody else sees it.
    attacker_file = await api.uploaded_file(lines("sim-chat-1b"), headers=attacker)
    body = {"input_dataset": attacker_file, "endpoint": CHAT, "model_template_name": DEMO_TEMPLATE}
    r = await api.post("/api/v1/jobs", body, headers=attacker)
    assert (await api.db["jobs"].find_one({"_id": r.json()["id"]}))[
        "model_template_id"
    ] == "tmpl_evil"
    listed = await api.get(f"/api/v1/models/{DEMO_MODEL}/deployment-templates")
    assert [t["id"] for t in listed.json()["data"]] == [published]
    hidden = await api.get(f"/api/v1/models/{DEMO_MODEL}/deployment-templates/tmpl_evil")
    assert hidden.status_code == 404
    everything = await api.get(
        f"/api/v1/models/{DEMO_MODEL}/deployment-templates", headers=api.operator
    )
    assert {t["id"] for t in everything.json()["data"]} == {published, "tmpl_evil"}


async def test_a_name_on_several_models_is_ambiguous_unless_the_model_is_named(api: Any) -> None:
    await publish_demo(api)
    await api.ready_template()
    body = api.template_body(name=DEMO_TEMPLATE)
    r = await api.post_operator(f"/api/v1/models/{api.model_id}/deployment-templates", body)
    assert r.status_code == 200, r.text
    file_id = await api.uploaded_file()
    job = {"input_dataset": file_id, "endpoint": CHAT, "model_template_name": DEMO_TEMPLATE}
    r = await api.post("/api/v1/jobs", job)
    assert (r.status_code, r.json()["code"]) == (400, "ambiguous_template"), r.text
    assert DEMO_MODEL in r.json()["message"] and api.model_id in r.json()["message"]
    r = await api.post("/api/v1/jobs", {**job, "model_id": DEMO_MODEL})
    assert r.status_code == 200, r.text
    assert r.json()["model_id"] == DEMO_MODEL
    assert await api.count("jobs") == 1


@pytest.mark.parametrize(
    ("engine", "field"),
    [
        ({"command": ["vllm", "serve\nrm -rf /"]}, "spec.engine.command[1]"),
        ({"command": ["a\x00b"]}, "spec.engine.command[0]"),
        ({"command": []}, "spec.engine.command"),
        ({"command": ["x"] * 65}, "spec.engine.command"),
        ({"command": ["x" * 1025]}, "spec.engine.command[0]"),
        ({"image": "--privileged"}, "spec.engine.image"),
        ({"image": "vllm/vllm-openai latest"}, "spec.engine.image"),
        ({"serve_args": ["--x\n"]}, "spec.engine.serve_args[0]"),
    ],
)
async def test_what_runs_on_a_machine_is_validated_for_operators_too(
    api: Any, engine: dict[str, Any], field: str
) -> None:
    model_id = await api.ready_template()
    body = api.template_body(name="strict")
    body["spec"]["engine"].update(engine)
    r = await api.post_operator(f"/api/v1/models/{model_id}/deployment-templates", body)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_request"), r.text
    assert field in r.json()["message"]
    assert await api.count("templates") == 1


async def test_option_shaped_model_uri_and_engine_arg_keys_are_refused(api: Any) -> None:
    model_id = await api.ready_template()
    body = api.template_body(name="strict")
    body["spec"]["model_source"]["uri"] = "--trust-remote-code"
    r = await api.post_operator(f"/api/v1/models/{model_id}/deployment-templates", body)
    assert r.status_code == 400 and "spec.model_source.uri" in r.json()["message"]
    body = api.template_body(name="strict")
    body["spec"]["engine_args"] = {"max model len; id": 1}
    r = await api.post_operator(f"/api/v1/models/{model_id}/deployment-templates", body)
    assert r.status_code == 400 and "spec.engine_args" in r.json()["message"]


async def test_versions_are_deprecated_and_deleted_by_operators(api: Any) -> None:
    model_id = await api.ready_template()
    base = f"/api/v1/models/{model_id}/deployment-templates"
    v1 = (await api.get(f"{base}/by-name/{api.template_name}")).json()["id"]
    r = await api.post_operator(base, api.template_body(version="v2.0.0"))
    v2 = r.json()["id"]
    resolved = await api.get(f"{base}/by-name/{api.template_name}")
    assert resolved.json()["id"] == v2

    for method in ("put", "delete"):
        kwargs: dict[str, Any] = {"headers": api.auth}
        if method == "put":
            kwargs["json"] = {"status": "deprecated"}
        r = await api.client.request(method.upper(), f"{base}/{v2}", **kwargs)
        assert (r.status_code, r.json()["code"]) == (403, "operator_only"), r.text
    r = await api.client.put(f"{base}/{v2}", json={"status": "deprecated"}, headers=api.operator)
    assert (r.status_code, r.json()["status"]) == (200, "deprecated"), r.text

    # Not chosen by default any more; still run when named exactly.
    assert (await api.get(f"{base}/by-name/{api.template_name}")).json()["id"] == v1
    r = await api.post("/api/v1/jobs", await api.job_request())
    assert r.json()["model_template_version"] == "v1.0.0"
    r = await api.post("/api/v1/jobs", await api.job_request(model_template_version="v2.0.0"))
    assert r.json()["model_template_version"] == "v2.0.0", r.text

    r = await api.client.delete(f"{base}/{v1}", headers=api.operator)
    assert r.json() == {"id": v1, "object": "model_deployment_template", "deleted": True}
    r = await api.client.delete(f"{base}/{v1}", headers=api.operator)
    assert r.status_code == 200 and r.json()["deleted"] is False
    r = await api.post("/api/v1/jobs", await api.job_request())
    assert (r.status_code, r.json()["code"]) == (400, "template_not_found")
    assert await api.count("jobs") == 2


async def test_a_batch_with_no_metadata_runs_on_the_template_of_its_model(api: Any) -> None:
    """What the plain OpenAI SDK sends: no neobatch metadata, `body.model` on every line."""
    model_id = await api.ready_template()  # serving name qwen-7b
    file_id = await api.uploaded_file(lines("qwen-7b", "qwen-7b"))
    batch = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
    r = await api.post("/v1/batches", batch)
    assert r.status_code == 200, r.text
    job = await api.db["jobs"].find_one({"batch_id": r.json()["id"]})
    assert (job["model_template_name"], job["status"]) == (api.template_name, "queued")
    # Versions of one template are one choice: the highest active runs.
    r = await api.post_operator(
        f"/api/v1/models/{model_id}/deployment-templates", api.template_body(version="v1.1.0")
    )
    r = await api.post("/v1/batches", batch)
    assert r.status_code == 200, r.text
    job = await api.db["jobs"].find_one({"batch_id": r.json()["id"]})
    assert job["model_template_version"] == "v1.1.0"

    # A second template for the model and no default: a 400 naming both.
    r = await api.post_operator(
        f"/api/v1/models/{model_id}/deployment-templates", api.template_body(name="qwen-big")
    )
    assert r.status_code == 200, r.text
    r = await api.post("/v1/batches", batch)
    assert (r.status_code, r.json()["code"]) == (400, "ambiguous_template"), r.text
    assert "qwen-big" in r.json()["message"] and api.template_name in r.json()["message"]
    r = await api.client.put(
        f"/api/v1/models/{model_id}", json={"default_template": "qwen-big"}, headers=api.auth
    )
    assert r.status_code == 403
    r = await api.client.put(
        f"/api/v1/models/{model_id}", json={"default_template": "qwen-big"}, headers=api.operator
    )
    assert (r.status_code, r.json()["default_template"]) == (200, "qwen-big"), r.text
    r = await api.post("/v1/batches", batch)
    assert r.status_code == 200, r.text
    job = await api.db["jobs"].find_one({"batch_id": r.json()["id"]})
    assert job["model_template_name"] == "qwen-big"

    # Lines naming two models, or a model nothing serves: 400, nothing created.
    before = await api.count("jobs")
    for content, code in (
        (lines("qwen-7b", "other-model"), "multiple_models"),
        (lines("nobody-serves-this"), "template_not_found"),
    ):
        other = await api.uploaded_file(content)
        r = await api.post("/v1/batches", {**batch, "input_file_id": other})
        assert (r.status_code, r.json()["code"]) == (400, code), r.text
    assert await api.count("jobs") == before


async def test_a_template_stored_before_owners_is_published(api: Any) -> None:
    model_id = await api.ready_template()
    await api.db["templates"].update_many({}, {"$unset": {"project": ""}})
    _, other = await api.new_key("other")
    listed = await api.get(f"/api/v1/models/{model_id}/deployment-templates", headers=other)
    assert [t["name"] for t in listed.json()["data"]] == [api.template_name]
    assert listed.json()["data"][0]["project"] is None
    file_id = await api.uploaded_file(headers=other)
    body = {"input_dataset": file_id, "endpoint": CHAT, "model_template_name": api.template_name}
    assert (await api.post("/api/v1/jobs", body, headers=other)).status_code == 200
