"""The served OpenAPI document describes every route and is true to the wire: fuzzing every
operation from it (hypothesis: schema-shaped and arbitrary JSON, hostile bodies, odd path and
query values, methods a path does not serve) finds no 5xx, no status the operation does not
document, no body that does not match the documented schema, and `Allow` on every 405.

Schemathesis found those on the local stack (issue 13); this is the same check in process,
with bounded examples, as part of `./task test`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from litestar.testing import TestClient

from neobatch.console.app import create_app
from neobatch.console.settings import ConsoleSettings

AUTH = {"Authorization": "Bearer nb-test-key-0123456789"}
# The conftest's operator key: catalog writes answer 403 to a project key before their body is read.
OPERATOR = {"Authorization": "Bearer nb-test-operator-0123456789"}
EXPECTED_ROUTES = {
    ("post", "/v1/files"),
    ("get", "/v1/files"),
    ("get", "/v1/files/{file_id}"),
    ("delete", "/v1/files/{file_id}"),
    ("get", "/v1/files/{file_id}/content"),
    ("post", "/v1/batches"),
    ("get", "/v1/batches"),
    ("get", "/v1/batches/{batch_id}"),
    ("post", "/v1/batches/{batch_id}/cancel"),
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{job_id}"),
    ("post", "/api/v1/jobs/{job_id}/cancel"),
    ("get", "/api/v1/config/job-capabilities"),
    ("post", "/api/v1/files/upload"),
    ("get", "/api/v1/files"),
    ("delete", "/api/v1/files/{file_id}"),
    ("post", "/api/v1/models"),
    ("get", "/api/v1/models"),
    ("get", "/api/v1/models/{model_id}"),
    ("post", "/api/v1/models/{model_id}/deployment-templates"),
    ("get", "/api/v1/models/{model_id}/deployment-templates"),
    ("get", "/api/v1/models/{model_id}/deployment-templates/{template_id}"),
    ("get", "/api/v1/models/{model_id}/deployment-templates/by-name/{name}"),
    ("put", "/api/v1/models/{model_id}"),
    ("put", "/api/v1/models/{model_id}/deployment-templates/{template_id}"),
    ("delete", "/api/v1/models/{model_id}/deployment-templates/{template_id}"),
    ("get", "/api/v1/projects/{project}/quotas"),
    ("put", "/api/v1/projects/{project}/quotas"),
    ("post", "/api/v1/keys"),
    ("get", "/api/v1/keys"),
    ("delete", "/api/v1/keys/{key_id}"),
}

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


def from_schema(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> Any:
    """A loose strategy for values of a JSON schema: valid-looking, sometimes not."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return from_schema(components.get(name, {}), components, depth + 1)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return st.one_of([from_schema(s, components, depth + 1) for s in schema[key]])
    if depth > 6:
        return JSON
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, components, depth) for k in kind])
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | JSON
    if kind == "object":
        props = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        fields = {k: from_schema(v, components, depth + 1) for k, v in props.items()}
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    if kind == "array":
        return st.lists(from_schema(schema.get("items") or {}, components, depth + 1), max_size=3)
    if kind == "integer":
        return st.integers(min_value=-(2**40), max_value=2**40) | st.sampled_from([2**63, 2**70])
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return st.text(max_size=40) | st.sampled_from(["24h", "1d2h", "/v1/chat/completions"])
    return JSON


@pytest.fixture
def client(console_settings: ConsoleSettings) -> Iterator[TestClient[Any]]:
    with TestClient(app=create_app(console_settings)) as test_client:
        yield test_client


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "delete", "patch"}
    ]


def test_openapi_document_describes_every_route(client: TestClient[Any]) -> None:
    r = client.get("/schema/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    served = {(method, path.rstrip("/") or "/") for method, path, _ in operations(doc)}
    assert EXPECTED_ROUTES <= served, EXPECTED_ROUTES - served
    assert "bearer" in doc["components"]["securitySchemes"]


# Bodies no schema describes: nesting past any decoder, bytes that are not UTF-8, huge numbers.
HOSTILE_BODIES = st.sampled_from(
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"name": ' + b"[" * 200 + b"]" * 200 + b"}",
        b'{"name": "\xff"}',
        b"\xff\xfe",
        b'{"name": "m", "context_length": 1' + b"0" * 30 + b"}",
        b"",
    ]
)


class Conformance:
    """The documented statuses and response schemas of each operation, checked on a response."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self._components = doc.get("components", {})

    def check(self, op: dict[str, Any], call: Any, response: Any) -> None:
        status = str(response.status_code)
        documented = op.get("responses") or {}
        assert status in documented, (call, response.status_code, response.text)
        content = documented[status].get("content") or {}
        if "application/json" not in content:
            return
        schema = content["application/json"].get("schema") or {}
        validator = Draft202012Validator({**schema, "components": self._components})
        errors = [e.message for e in validator.iter_errors(response.json())]
        assert not errors, (call, response.status_code, response.text, errors)


def test_fuzzing_every_operation_conforms_to_the_document(client: TestClient[Any]) -> None:
    doc = client.get("/schema/openapi.json").json()
    components = doc.get("components", {}).get("schemas", {})
    ops = [op for op in operations(doc) if op[1].startswith(("/v1", "/api"))]
    by_key = {(method, path): op for method, path, op in ops}
    served = {path: {m for m, p, _ in ops if p == path} for _, path, _ in ops}
    conformance = Conformance(doc)
    segment = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
    segment = segment | st.sampled_from(["file_x", "job_x", "batch_x", "model-x", "..", "%00"])

    @st.composite
    def request(draw: st.DrawFn) -> tuple[str, str, str, dict[str, Any]]:
        method, template, op = draw(st.sampled_from(ops))
        path = template
        headers = draw(st.sampled_from([AUTH, OPERATOR]))
        kwargs: dict[str, Any] = {"headers": dict(headers), "params": {}}
        for param in op.get("parameters") or []:
            value = draw(from_schema(param.get("schema") or {}, components))
            if param["in"] == "path":
                path = path.replace("{" + param["name"] + "}", quote(str(draw(segment)), safe=""))
            elif param["in"] == "query" and draw(st.booleans()):
                kwargs["params"][param["name"]] = (
                    value if isinstance(value, (str, int)) else str(value)
                )
        content = (op.get("requestBody") or {}).get("content") or {}
        if "multipart/form-data" in content:
            first = draw(st.sampled_from([b"", b"\xff\n", b"[" * 3000 + b"\n"]))
            kwargs["files"] = {
                "file": (
                    draw(st.sampled_from(["a.jsonl", "b.txt"])),
                    first + draw(st.binary(max_size=64)),
                )
            }
            kwargs["data"] = {"purpose": draw(st.sampled_from(["batch", "x"]))}
        elif "application/json" in content:
            schema = content["application/json"].get("schema") or {}
            if draw(st.integers(0, 4)) == 0:
                kwargs["content"] = draw(HOSTILE_BODIES)
                kwargs["headers"]["content-type"] = "application/json"
            else:
                kwargs["json"] = draw(from_schema(schema, components) | JSON)
        return method, template, path, kwargs

    @settings(
        max_examples=400,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(request())
    def conforms(call: tuple[str, str, str, dict[str, Any]]) -> None:
        method, template, path, kwargs = call
        response = client.request(method.upper(), path, **kwargs)
        assert response.status_code < 500, (method, path, kwargs, response.text)
        conformance.check(by_key[(method, template)], call, response)

    conforms()

    # A method a path does not serve: 405 with `Allow` naming what it does.
    for path, methods in served.items():
        concrete = path.replace("{", "x").replace("}", "")
        for method in {"put", "patch", "delete", "post", "get"} - methods:
            response = client.request(method.upper(), concrete, headers=AUTH)
            assert response.status_code == 405, (method, path, response.text)
            allowed = {m.strip().lower() for m in response.headers["allow"].split(",")}
            assert methods <= allowed, (method, path, response.headers["allow"])
            assert response.json()["code"] == "method_not_allowed"
