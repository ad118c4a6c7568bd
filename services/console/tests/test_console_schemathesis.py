"""Schemathesis against the console's own OpenAPI document (issue 13): every operation, bounded
examples, schemathesis's response checks (no 5xx, documented status codes, content types,
response schemas and headers, `Allow` on 405). Zero failures.

The document is read from the running app (`/schema/openapi.json`); each generated case is sent
through the in-process Litestar client (its lifespan holds the NATS and MongoDB connections) and
validated by schemathesis. Catalog writes (models, templates) carry the operator key, the rest the
project key: a project key gets a documented 403 there before its body is read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from litestar.testing import TestClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from neobatch.console.app import create_app
from neobatch.console.settings import ConsoleSettings

PROJECT = {"Authorization": "Bearer nb-test-key-0123456789"}
OPERATOR = {"Authorization": "Bearer nb-test-operator-0123456789"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    allow_header_conformance,
]
# Ten per operation and mode: every operation is still fuzzed both ways (the check below), and
# generation is most of the cost (20 took 45 s of CPU on a quiet machine).
MAX_EXAMPLES = 10


@pytest.fixture
def client(console_settings: ConsoleSettings) -> Iterator[TestClient[Any]]:
    with TestClient(app=create_app(console_settings)) as test_client:
        yield test_client


def headers_for(method: str, path: str) -> dict[str, str]:
    catalog_write = path.startswith("/api/v1/models") and method.upper() != "GET"
    return dict(OPERATOR if catalog_write else PROJECT)


def send(client: TestClient[Any], case: schemathesis.Case) -> Any:
    """Encode the case exactly as schemathesis's requests transport would (multipart included),
    then send the bytes through the in-process client."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver.local")
    kwargs["headers"] = {**(kwargs.get("headers") or {}), **headers_for(case.method, case.path)}
    known = {"method", "url", "headers", "files", "data", "json", "params", "cookies"}
    prepared = requests.Request(**{k: v for k, v in kwargs.items() if k in known}).prepare()
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    return client.request(
        prepared.method or case.method,
        prepared.url or "/",
        headers=dict(prepared.headers),
        content=body,
    )


def run(
    client: TestClient[Any],
    operation: Any,
    mode: GenerationMode,
    counts: dict[tuple[str, str], int],
) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def conforms(case: schemathesis.Case) -> None:
        key = (operation.label, mode.value)
        counts[key] = counts.get(key, 0) + 1
        case.validate_response(send(client, case), checks=CHECKS)

    conforms()


def test_schemathesis_finds_no_failure_on_any_operation(client: TestClient[Any]) -> None:
    raw = client.get("/schema/openapi.json")
    assert raw.status_code == 200
    schema = schemathesis.openapi.from_dict(raw.json())
    operations = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path.startswith(("/v1", "/api"))
    ]
    assert len(operations) >= 27, [op.label for op in operations]
    # Issue 18's retry route is among them (its 409 codes are documented: it takes a body).
    assert "POST /api/v1/jobs/{job_id}/retry" in {op.label for op in operations}
    counts: dict[tuple[str, str], int] = {}
    started = time.monotonic()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run(client, operation, mode, counts)
    elapsed = time.monotonic() - started
    positive = sum(n for (_, mode), n in counts.items() if mode == "positive")
    negative = sum(n for (_, mode), n in counts.items() if mode == "negative")
    print(
        f"schemathesis: {positive} positive + {negative} negative cases over "
        f"{len(operations)} operations in {elapsed:.1f}s"
    )
    assert {label for label, _ in counts} == {op.label for op in operations}


def test_an_id_holding_an_encoded_slash_is_not_found_not_another_routes_405(
    client: TestClient[Any],
) -> None:
    # Routed on the decoded path, ".../deployment-templates/%2F" is ".../deployment-templates//",
    # the template list, which has no DELETE: a 405 its operation does not document.
    path = "/api/v1/models/0/deployment-templates/%2F"
    response = client.delete(path, headers=OPERATOR)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "not_found"
    doc = client.get("/schema/openapi.json").json()
    responses = doc["paths"]["/api/v1/models/{model_id}/deployment-templates/{template_id}"]
    assert "404" in responses["delete"]["responses"]
