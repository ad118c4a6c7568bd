"""Private deployment templates, where the operator allows them (NEOBATCH_PRIVATE_TEMPLATE_
PROJECTS, here project `team`): never a launch command, never shadowing a published name."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from neobatch.console.settings import ConsoleSettings

CHAT = "/v1/chat/completions"


@pytest.fixture
def console_settings(console_settings: ConsoleSettings) -> ConsoleSettings:
    return msgspec.structs.replace(console_settings, private_template_projects=("team",))


def project_template(**engine: Any) -> dict[str, Any]:
    return {
        "name": "team-tuned",
        "private": True,
        "spec": {
            "engine": {"type": "vllm", **engine},
            "model_source": {"uri": "Qwen/Qwen2.5-7B-Instruct"},
            "accelerator": {"type": "H100"},
            "engine_args": {"max_model_len": 8192, "--enable-prefix-caching": True},
        },
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"engine": {"command": ["sh", "-c", "id"]}}, "spec.engine.command"),
        ({"engine": {"image": "evil/image:latest"}}, "spec.engine.image"),
        ({"engine": {"serve_args": ["--worker-extension-cls", "x.Y"]}}, "spec.engine.serve_args"),
        ({"engine_args": {"trust_remote_code": True}}, "spec.engine_args.trust_remote_code"),
        ({"engine_args": {"host": "0.0.0.0"}}, "spec.engine_args.host"),
        ({"engine_args": {"--tool-parser-plugin": "/x.py"}}, "spec.engine_args.--tool-parser"),
    ],
)
async def test_a_project_template_never_decides_what_runs(
    api: Any, change: dict[str, Any], field: str
) -> None:
    model_id = await api.ready_template()
    _, team = await api.new_key("team")
    body = project_template()
    body["spec"]["engine"].update(change.get("engine", {}))
    body["spec"]["engine_args"].update(change.get("engine_args", {}))
    r = await api.post(f"/api/v1/models/{model_id}/deployment-templates", body, headers=team)
    assert (r.status_code, r.json()["code"]) == (403, "operator_only_field"), r.text
    assert field in r.json()["message"]
    assert await api.count("templates") == 1


async def test_a_project_owns_a_private_template_nobody_else_sees(api: Any) -> None:
    model_id = await api.ready_template()
    base = f"/api/v1/models/{model_id}/deployment-templates"
    _, team = await api.new_key("team")
    _, other = await api.new_key("other")
    r = await api.post(base, project_template(), headers=other)  # not allowed for `other`
    assert (r.status_code, r.json()["code"]) == (403, "operator_only")
    r = await api.post(base, {**project_template(), "private": False}, headers=team)
    assert r.status_code == 200, r.text  # a project key's template is always its own
    mine = r.json()
    assert mine["project"] == "team"

    # It never shadows a published name, and a published one never takes its name.
    clash = {**project_template(), "name": api.template_name}
    r = await api.post(base, clash, headers=team)
    assert (r.status_code, r.json()["code"]) == (409, "template_name_taken"), r.text
    r = await api.post_operator(base, api.template_body(name="team-tuned"))
    assert (r.status_code, r.json()["code"]) == (409, "template_name_taken"), r.text

    assert (await api.get(f"{base}/{mine['id']}", headers=other)).status_code == 404
    names = [t["name"] for t in (await api.get(base, headers=other)).json()["data"]]
    assert names == [api.template_name]
    assert (await api.get(f"{base}/by-name/team-tuned", headers=other)).status_code == 404
    assert (await api.get(f"{base}/by-name/team-tuned", headers=team)).json()["id"] == mine["id"]

    team_file = await api.uploaded_file(headers=team)
    body = {"input_dataset": team_file, "endpoint": CHAT, "model_template_name": "team-tuned"}
    r = await api.post("/api/v1/jobs", body, headers=team)
    assert r.status_code == 200, r.text
    other_file = await api.uploaded_file(headers=other)
    r = await api.post("/api/v1/jobs", {**body, "input_dataset": other_file}, headers=other)
    assert (r.status_code, r.json()["code"]) == (400, "template_not_found")
