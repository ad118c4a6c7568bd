"""The providers' OpenAPI documents (verbatim copies of ``shared/specs``) and a validator.

``OpenApiDoc`` checks a request body or a response against the document's JSON Schemas (both
documents are OpenAPI 3.1, so the schemas are JSON Schema 2020-12 and ``jsonschema`` validates
them directly; ``$ref`` pointers resolve inside the whole document). The simulators reject
requests that the document rejects, and the contract tests check every recorded exchange.

Undocumented statuses: Lambda's document lists no 429 or 5xx, yet the live API sends them
(``reference/provider-apis.md`` §2.9); those are accepted when they carry the error envelope.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_DIR = Path(__file__).parent
RUNPOD_V2 = SPEC_DIR / "runpod-rest-v2.openapi.json"
LAMBDA_V1 = SPEC_DIR / "lambda-cloud-v1.openapi.json"
_URI = "urn:neobatch:openapi"
_METHODS = ("get", "post", "put", "patch", "delete")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class OpenApiDoc:
    def __init__(self, path: Path) -> None:
        self.doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self._registry: Registry = Registry().with_resource(_URI, resource)
        self._routes: list[tuple[str, str, re.Pattern[str]]] = []
        for template, item in self.doc["paths"].items():
            pattern = re.compile("^" + re.sub(r"\{[^}/]+\}", r"[^/]+", template) + "$")
            for method in item:
                if method in _METHODS:
                    self._routes.append((method, template, pattern))
        # Literal paths before templated ones (`/v2/catalog/gpus` vs `/v2/catalog/gpus/{id}`).
        self._routes.sort(key=lambda route: route[1].count("{"))

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        method = method.lower()
        for route_method, template, pattern in self._routes:
            if route_method == method and pattern.match(path):
                return template, self.doc["paths"][template][method]
        return None

    @functools.cache  # noqa: B019 - documents live for the process
    def _validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{_URI}#{pointer}"}, registry=self._registry)

    def _errors(self, pointer: str, value: Any) -> list[str]:
        validator = self._validator(pointer)
        return [
            f"{'/'.join(str(p) for p in error.absolute_path) or '$'}: {error.message}"
            for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        ][:10]

    def request_errors(self, method: str, path: str, body: Any) -> list[str]:
        """Schema problems with a JSON request body ([] when it conforms)."""
        found = self.operation(method, path)
        if found is None:
            return [f"{method.upper()} {path} is not in the document"]
        template, op = found
        content = (op.get("requestBody") or {}).get("content", {})
        if "application/json" not in content:
            return [] if body is None else [f"{method.upper()} {template} takes no JSON body"]
        if body is None:
            required = (op.get("requestBody") or {}).get("required", False)
            return ["a JSON body is required"] if required else []
        pointer = "/".join(
            [
                "",
                "paths",
                _escape(template),
                method.lower(),
                "requestBody",
                "content",
                "application~1json",
                "schema",
            ]
        )
        return self._errors(pointer, body)

    def response_errors(
        self, method: str, path: str, status: int, content_type: str, body: Any
    ) -> list[str]:
        """Problems with a response: undocumented status, wrong content type, schema errors."""
        found = self.operation(method, path)
        if found is None:
            return [f"{method.upper()} {path} is not in the document"]
        template, op = found
        responses = op.get("responses", {})
        key = str(status) if str(status) in responses else "default"
        if key not in responses:
            if status == 429 or status >= 500:
                return []  # recorded live behaviour the document omits (module docstring)
            return [f"{method.upper()} {template}: status {status} is not documented"]
        base = ["", "paths", _escape(template), method.lower(), "responses", key]
        response = responses[key]
        if "$ref" in response:
            name = response["$ref"].rsplit("/", 1)[1]
            response = self.doc["components"]["responses"][name]
            base = ["", "components", "responses", _escape(name)]
        content = response.get("content") or {}
        if not content:
            return [] if body is None else [f"status {status} must have no body"]
        media = content_type.split(";")[0].strip()
        if media not in content:
            return [f"status {status}: content type {media!r} not in {sorted(content)}"]
        if "schema" not in content[media]:
            return []
        return self._errors("/".join([*base, "content", _escape(media), "schema"]), body)


@functools.cache
def runpod_doc() -> OpenApiDoc:
    return OpenApiDoc(RUNPOD_V2)


@functools.cache
def lambda_doc() -> OpenApiDoc:
    return OpenApiDoc(LAMBDA_V1)
