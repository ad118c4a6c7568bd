"""Hostile input never costs a 500 (issue 13, finding 5): JSON nested thousands deep, bytes that
are not UTF-8, integers past int64, on every route that takes a JSON body and in every line of
a batch input file. Each is a 400 with a stable `code`, or a per-line error naming the line."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import pytest_asyncio
from litestar.testing import AsyncTestClient

from neobatch.common.jsonbounds import MAX_JSON_DEPTH
from neobatch.console.app import create_app
from neobatch.console.settings import ConsoleSettings

CHAT = "/v1/chat/completions"
BIG = 2**64  # past int64: BSON cannot store it
MODEL_PATH = "/api/v1/models"
TEMPLATES_PATH = "/api/v1/models/model-qwen2-5-7b-instruct/deployment-templates"

MODEL_ITEM = "/api/v1/models/model-qwen2-5-7b-instruct"
# The body is refused before the template is looked up: any id will do.
TEMPLATE_ITEM = TEMPLATES_PATH + "/tmpl_0"
QUOTAS_PATH = "/api/v1/projects/default/quotas"
KEYS_PATH = "/api/v1/keys"
BUDGET_PATH = "/api/v1/projects/default/budget"
OPERATOR_PATHS = (MODEL_PATH, QUOTAS_PATH, BUDGET_PATH, KEYS_PATH)

# Every operation that takes a JSON body; `test_every_json_route_is_covered` keeps this whole.
JSON_ROUTES = [
    ("POST", MODEL_PATH),
    ("POST", TEMPLATES_PATH),
    ("POST", "/api/v1/jobs"),
    ("POST", "/api/v1/jobs/job_0/retry"),
    ("POST", "/v1/batches"),
    ("PUT", MODEL_ITEM),
    ("PUT", TEMPLATE_ITEM),
    ("PUT", QUOTAS_PATH),
    ("PUT", BUDGET_PATH),
    ("POST", KEYS_PATH),
    ("POST", "/v1/webhook_endpoints"),
    ("POST", "/v1/webhook_endpoints/we_0"),
    ("POST", "/v1/webhook_endpoints/we_0/rotate_secret"),
    ("POST", "/api/v1/webhooks"),
    ("POST", "/api/v1/webhooks/we_0"),
    ("POST", "/api/v1/webhooks/we_0/rotate_secret"),
]


def _template(api: Any, **spec: Any) -> dict[str, Any]:
    body = api.template_body(name="huge")
    for path, value in spec.items():
        node = body["spec"]
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return dict(body)


# (route, a body whose only fault is one integer past int64, the field the error names)
def _int64_cases(api: Any, file_id: str) -> list[tuple[str, dict[str, Any], str]]:
    job = {"input_dataset": file_id, "endpoint": CHAT, "model_template_name": api.template_name}
    batch = {"input_file_id": file_id, "endpoint": CHAT}
    cases: list[tuple[str, dict[str, Any], str]] = [
        (MODEL_PATH, {"name": "m-big", "context_length": BIG}, "context_length"),
        (TEMPLATES_PATH, _template(api, **{"accelerator.count": BIG}), "accelerator.count"),
        (TEMPLATES_PATH, _template(api, **{"accelerator.vram_gb": BIG}), "accelerator.vram_gb"),
        (TEMPLATES_PATH, _template(api, **{"engine.ready_timeout_seconds": BIG}), "ready_timeout"),
        (TEMPLATES_PATH, _template(api, **{"engine.port": BIG}), "engine.port"),
        (TEMPLATES_PATH, _template(api, engine_args={"max-num-seqs": BIG}), "engine_args"),
        (TEMPLATES_PATH, _template(api, engine_args={"x": -BIG}), "engine_args"),
        (
            "/api/v1/jobs",
            {**job, "resource_request": {"provider_config": {"a": [{"b": BIG}]}}},
            "provider_config",
        ),
        ("/api/v1/jobs", {**job, "request_count_total": BIG}, "request_count_total"),
        ("/api/v1/jobs", {**job, "client": {"max_concurrency": BIG}}, "max_concurrency"),
        ("/api/v1/jobs", {**job, "max_cost_usd": BIG}, "max_cost_usd"),
        ("/v1/batches", {**batch, "output_expires_after": {"seconds": BIG}}, "seconds"),
    ]
    cases += [
        (TEMPLATES_PATH, _template(api, **{f"parallelism.{p}": BIG}), f"parallelism.{p}")
        for p in ("tp", "pp", "dp", "ep", "sp", "cp")
    ]
    return cases


def _key(api: Any, path: str) -> dict[str, str]:
    """Catalog, quota and key writes take an operator key; everything else the project key."""
    return dict(api.operator if path.startswith(OPERATOR_PATHS) else api.auth)


async def _send_raw(api: Any, route: tuple[str, str], content: bytes) -> Any:
    method, path = route
    headers = {**_key(api, path), "content-type": "application/json"}
    return await api.client.request(method, path, headers=headers, content=content)


async def _post(api: Any, path: str, body: Any) -> Any:
    return await api.post(path, body, headers=_key(api, path))


async def _stored(api: Any) -> int:
    collections = (
        "models",
        "templates",
        "jobs",
        "outbox",
        "project_quotas",
        "project_budgets",
        "api_keys",
        "webhook_endpoints",
    )
    return sum([await api.count(c) for c in collections])


async def test_every_json_route_is_covered(api: Any) -> None:
    doc = (await api.get("/schema/openapi.json")).json()
    with_json = {
        path.rstrip("/")
        for path, item in doc["paths"].items()
        for op in item.values()
        if isinstance(op, dict)
        and "application/json" in ((op.get("requestBody") or {}).get("content") or {})
    }
    routes = {
        path.replace("model-qwen2-5-7b-instruct", "{model_id}")
        .replace("tmpl_0", "{template_id}")
        .replace("/projects/default/", "/projects/{project}/")
        .replace("/we_0", "/{endpoint_id}")
        .replace("/jobs/job_0/", "/jobs/{job_id}/")
        for _, path in JSON_ROUTES
    }
    assert with_json == routes


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1_000, 100_000])
async def test_deeply_nested_json_body_is_a_400(
    api: Any, route: tuple[str, str], depth: int
) -> None:
    await api.ready_template()
    before = await _stored(api)
    nested = b"[" * depth + b"]" * depth
    unclosed = [b'{"a": ' * depth + b"1"] if depth >= 1000 else []  # decoder-deep, not parsed
    for body in [nested, b'{"name": ' + nested + b"}", *unclosed]:
        r = await _send_raw(api, route, body)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "json_too_deep", r.text
    assert await _stored(api) == before


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "\xff"}',
        b'{"\xff": 1}',
        b"\xff",
        b'{"name": "a\xc3"}',
        b'{"name": "\xed\xa0\x80"}',
    ],
)
async def test_json_body_that_is_not_utf8_is_a_400(
    api: Any, route: tuple[str, str], body: bytes
) -> None:
    await api.ready_template()
    before = await _stored(api)
    r = await _send_raw(api, route, body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_json", r.text
    assert await _stored(api) == before


async def test_integers_past_int64_are_a_400_naming_the_field(api: Any) -> None:
    await api.ready_template()
    file_id = await api.uploaded_file()
    before = await _stored(api)
    for path, body, field in _int64_cases(api, file_id):
        r = await _post(api, path, body)
        assert r.status_code == 400, (path, field, r.text)
        assert r.json()["code"] == "invalid_request", r.text
        assert field in r.json()["message"], r.text
    assert await _stored(api) == before


async def test_oversized_lists_maps_and_strings_are_a_400(api: Any) -> None:
    await api.ready_template()
    file_id = await api.uploaded_file()
    job = {"input_dataset": file_id, "endpoint": CHAT, "model_template_name": api.template_name}
    cases = [
        (MODEL_PATH, {"name": "m", "tags": ["t"] * 10_000}, "tags"),
        (MODEL_PATH, {"name": "m", "categories": ["c"] * 10_000}, "categories"),
        (TEMPLATES_PATH, _template(api, engine_args={f"k{i}": i for i in range(10_000)}), "args"),
        (TEMPLATES_PATH, _template(api, **{"engine.serve_args": ["x"] * 10_000}), "serve_args"),
        (TEMPLATES_PATH, _template(api, supported_endpoints=["/v1/x"] * 10_000), "endpoints"),
        (
            "/api/v1/jobs",
            {**job, "resource_request": {"provider_config": {"a": "x" * 100_000}}},
            "provider_config",
        ),
    ]
    before = await _stored(api)
    for path, body, field in cases:
        r = await _post(api, path, body)
        assert r.status_code == 400, (path, field, r.text)
        assert r.json()["code"] == "invalid_request", r.text
        assert field in r.json()["message"], r.text
    assert await _stored(api) == before


# --- batch input files ---------------------------------------------------------------------


def _line(custom_id: str, body: bytes = b'{"model":"m","messages":[]}') -> bytes:
    head = f'{{"custom_id":"{custom_id}","method":"POST","url":"{CHAT}","body":'.encode()
    return head + body + b"}\n"


async def _upload(api: Any, content: bytes) -> Any:
    return await api.client.post(
        "/v1/files",
        headers=api.auth,
        data={"purpose": "batch"},
        files={"file": ("in.jsonl", content, "application/jsonl")},
    )


async def _create_both(api: Any, file_id: str) -> list[dict[str, Any]]:
    """A batch (OpenAI) and a job (AIBrix) on `file_id`: the OpenAI view of each."""
    batch = {"input_file_id": file_id, "endpoint": CHAT}
    batch["metadata"] = {"neobatch.template_name": api.template_name}
    r = await api.post("/v1/batches", batch)
    assert r.status_code == 200, r.text
    views = [r.json()]
    job = {"input_dataset": file_id, "endpoint": CHAT, "model_template_name": api.template_name}
    r = await api.post("/api/v1/jobs", job)
    assert r.status_code == 200, r.text
    r = await api.get(f"/v1/batches/{r.json()['batch_id']}")
    assert r.status_code == 200, r.text
    views.append(r.json())
    return views


@pytest.mark.parametrize(
    "first_line",
    [b'{"custom_id": "\xff"}', b"\xff\n", b'{"custom_id": "a\xc3"}', b'{"\xff": 1}'],
)
async def test_upload_whose_first_line_is_not_utf8_is_a_400(api: Any, first_line: bytes) -> None:
    r = await _upload(api, first_line + b"\n" + _line("b"))
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_file" and "line 1" in r.json()["message"]
    assert await api.count("files.files") == 0


async def test_upload_whose_first_line_is_nested_too_deep_is_a_400(api: Any) -> None:
    deep = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    r = await _upload(api, deep + _line("b"))
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_file" and "deep" in r.json()["message"]
    assert await api.count("files.files") == 0


@pytest.mark.parametrize(
    ("bad_line", "code"),
    [
        (_line("b", b'{"content": "\xff"}'), "invalid_json_line"),
        (b'{"custom_id":"\xff","method":"POST"}\n', "invalid_json_line"),
        (b"\xff\xfe\n", "invalid_json_line"),
        (_line("b", b"[" * 5000 + b"]" * 5000), "json_too_deep"),
        (
            _line("b", b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1)),
            "json_too_deep",
        ),
    ],
)
async def test_a_hostile_later_line_fails_the_batch_at_that_line(
    api: Any, bad_line: bytes, code: str
) -> None:
    await api.ready_template()
    r = await _upload(api, _line("a") + bad_line + _line("c"))
    assert r.status_code == 200, r.text
    for view in await _create_both(api, r.json()["id"]):
        assert view["status"] == "failed", view
        [error] = view["errors"]["data"]
        assert (error["code"], error["line"]) == (code, 2), error
    assert await api.count("outbox", {"subject": {"$regex": "queued"}}) == 0


@pytest_asyncio.fixture
async def api_small_lines(api: Any, console_settings: ConsoleSettings) -> Any:
    """The console with a 64 KiB line limit (the default is 16 MiB), on `api`'s database."""
    common = msgspec.structs.replace(console_settings.common, max_input_line_bytes=64 * 1024)
    settings = msgspec.structs.replace(console_settings, common=common)
    async with AsyncTestClient(app=create_app(settings)) as client:
        yield type(api)(client, api.db, settings)


async def test_a_line_past_the_line_limit_fails_at_that_line(
    api_small_lines: Any,
) -> None:
    api = api_small_lines
    limit = api.settings.common.max_input_line_bytes
    await api.ready_template()
    long_body = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * limit + b'"}]}'
    r = await _upload(api, _line("a") + _line("b", long_body) + _line("c"))
    assert r.status_code == 200, r.text
    for view in await _create_both(api, r.json()["id"]):
        assert view["status"] == "failed", view
        [error] = view["errors"]["data"]
        assert (error["code"], error["line"]) == ("line_too_long", 2), error
        assert f"{limit:,}" in error["message"]


async def test_a_line_of_millions_of_empty_objects_is_a_per_line_error(api: Any) -> None:
    """The issue's attack: the second line holds millions of `{}` (here 6 million, 18 MB,
    past the 16 MiB default line limit). Memory and time are for `task bench:console`."""
    await api.ready_template()
    many = _line("b", b'{"a":[' + b"{}," * 6_000_000 + b"{}]}")
    r = await _upload(api, _line("a") + many + _line("c"))
    assert r.status_code == 200, r.text
    for view in await _create_both(api, r.json()["id"]):
        assert view["status"] == "failed", view
        [error] = view["errors"]["data"]
        assert (error["code"], error["line"]) == ("line_too_long", 2), error
