"""Models and deployment templates: create, duplicate, invalid spec, list."""

from __future__ import annotations

from typing import Any

import pytest

MODEL_ID = "model-qwen2-5-7b-instruct"


def template(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "engine": {"type": "vllm", "image": "vllm/vllm-openai:latest"},
        "model_source": {"type": "huggingface", "uri": "Qwen/Qwen2.5-7B-Instruct"},
        "accelerator": {"type": "H100", "count": 1},
    }
    spec.update(spec_overrides)
    return {"name": "qwen-cloud", "spec": spec}


async def test_model_is_created_with_a_slug_id_and_a_duplicate_is_409(api: Any) -> None:
    body = {"name": "Qwen2.5 7B Instruct", "categories": ["LLM"], "serving_name": "Qwen/Q"}
    created = await api.post_operator("/api/v1/models", body)
    assert created.status_code == 200, created.text
    assert created.json()["id"] == MODEL_ID
    assert created.json()["serving_name"] == "Qwen/Q"

    again = await api.post_operator("/api/v1/models", body)
    assert again.status_code == 409
    assert again.json()["code"] == "model_exists"
    assert MODEL_ID in again.json()["message"]

    got = await api.get(f"/api/v1/models/{MODEL_ID}")
    assert got.status_code == 200 and got.json()["categories"] == ["LLM"]
    listed = await api.get("/api/v1/models")
    assert [m["id"] for m in listed.json()["data"]] == [MODEL_ID]
    assert await api.count("models") == 1


async def test_unknown_model_is_404_json(api: Any) -> None:
    r = await api.get("/api/v1/models/model-nope")
    assert r.status_code == 404
    assert r.json() == {"code": "model_not_found", "message": "model 'model-nope' not found"}


async def test_template_gets_defaults_and_duplicate_version_is_409(api: Any) -> None:
    await api.post_operator("/api/v1/models", {"name": "Qwen2.5 7B Instruct"})
    created = await api.post_operator(f"/api/v1/models/{MODEL_ID}/deployment-templates", template())
    assert created.status_code == 200, created.text
    out = created.json()
    assert out["id"].startswith("tmpl_")
    assert (out["version"], out["status"], out["model_id"]) == ("v1.0.0", "active", MODEL_ID)
    assert out["spec"]["engine"]["port"] == 8000
    assert out["spec"]["accelerator"]["count"] == 1

    dup = await api.post_operator(f"/api/v1/models/{MODEL_ID}/deployment-templates", template())
    assert dup.status_code == 409 and dup.json()["code"] == "template_exists"

    newer = await api.post_operator(
        f"/api/v1/models/{MODEL_ID}/deployment-templates", {**template(), "version": "v1.1.0"}
    )
    assert newer.status_code == 200
    listed = await api.get(f"/api/v1/models/{MODEL_ID}/deployment-templates")
    assert sorted(t["version"] for t in listed.json()["data"]) == ["v1.0.0", "v1.1.0"]
    assert await api.count("templates") == 2


async def test_template_for_unknown_model_is_404(api: Any) -> None:
    r = await api.post_operator("/api/v1/models/model-ghost/deployment-templates", template())
    assert r.status_code == 404 and r.json()["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"name": "x", "spec": {"model_source": {"uri": "a"}, "accelerator": {"type": "H100"}}},
            "spec.engine",
        ),
        (template(accelerator={"type": "H100", "count": 0}), "spec.accelerator.count"),
        (template(model_source={"type": "huggingface"}), "spec.model_source.uri"),
        (template(engine={"port": 70000}), "spec.engine.port"),
        ({"spec": template()["spec"]}, "name"),
        ({**template(), "status": "live"}, "status"),
    ],
)
async def test_invalid_template_is_400_naming_the_field(
    api: Any, body: dict[str, Any], field: str
) -> None:
    await api.post_operator("/api/v1/models", {"name": "Qwen2.5 7B Instruct"})
    r = await api.post_operator(f"/api/v1/models/{MODEL_ID}/deployment-templates", body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_request"
    assert field in r.json()["message"]
    assert await api.count("templates") == 0


async def test_template_may_accept_several_gpu_types_and_declare_throughput(api: Any) -> None:
    """Issue 16: offers of any accepted GPU type are ranked by cost per job."""
    await api.post_operator("/api/v1/models", {"name": "Qwen2.5 7B Instruct"})
    body = template(
        accelerator={"type": "H100", "count": 1, "alternatives": ["A100"]},
        placement={
            "throughput": {"H100": 10300, "A100": 2400},
            "startup_seconds": 240,
            "output_tokens_per_request": 512,
        },
    )
    created = await api.post_operator(f"/api/v1/models/{MODEL_ID}/deployment-templates", body)
    assert created.status_code == 200, created.text
    spec = created.json()["spec"]
    assert spec["accelerator"]["alternatives"] == ["A100"]
    assert spec["placement"] == {
        "throughput": {"H100": 10300.0, "A100": 2400.0},
        "startup_seconds": 240.0,
        "output_tokens_per_request": 512,
    }


@pytest.mark.parametrize(
    ("placement", "field"),
    [
        ({"throughput": {"H100": 0}}, "spec.placement.throughput"),
        ({"throughput": {"H100": -5}}, "spec.placement.throughput"),
        ({"throughput": {"H100": "fast"}}, "spec.placement.throughput"),
        ({"startup_seconds": -1}, "spec.placement.startup_seconds"),
        ({"output_tokens_per_request": 0}, "spec.placement.output_tokens_per_request"),
    ],
)
async def test_bad_placement_hints_are_400_naming_the_field(
    api: Any, placement: dict[str, Any], field: str
) -> None:
    await api.post_operator("/api/v1/models", {"name": "Qwen2.5 7B Instruct"})
    r = await api.post_operator(
        f"/api/v1/models/{MODEL_ID}/deployment-templates", template(placement=placement)
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_request"
    assert field in r.json()["message"]
    assert await api.count("templates") == 0
