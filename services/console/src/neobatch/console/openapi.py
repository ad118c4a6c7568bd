"""The served OpenAPI document, true to the wire (issue 13): every error response is the
`{code, message}` body `errors.py` sends, under every status a route can answer.

Litestar documents a 400 as its own `{status_code, detail, extra}` and nothing else; the
document it builds is completed here, once, when the app is made (`app.openapi_schema` is
built on first use and cached, so this edits the document every request serves).
"""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
)

ERROR_SCHEMA = "ErrorBody"
# Every route behind the API key: its input, its key, its project's rights, what it names,
# the rate limit.
GUARDED = {
    "400": "Invalid input: malformed JSON or a field out of bounds (`code` says which)",
    "401": "Missing or unknown API key",
    "403": "The key may not do this",
    "404": "No such object in the caller's project, or no such route",
    # A path parameter holding `/` (e.g. `%2F`) can land on the collection's path, which may not
    # serve this method.
    "405": "The path reached does not serve this method; `Allow` names what it does",
    "429": "Rate limited; `Retry-After` says when to retry",
}
# Routes that take a body: what it conflicts with, its size, what it names.
WITH_BODY = {
    "409": "Conflicts with an existing object",
    "413": "The body (or the uploaded file) is larger than allowed",
    "422": "Well-formed, but names something that cannot be used this way",
}
UPLOAD = {"507": "The server has no room to receive the upload now; retry later"}
READY = {"503": "Not ready: a dependency does not answer (`message` names it)"}


def document_errors(app: Litestar) -> None:
    """Put the error body and every error status into `app`'s OpenAPI document."""
    document: OpenAPI = app.openapi_schema
    components = document.components
    components.schemas = dict(components.schemas or {})
    components.schemas[ERROR_SCHEMA] = Schema(
        type=OpenAPIType.OBJECT,
        required=["code", "message"],
        properties={
            "code": Schema(type=OpenAPIType.STRING, description="Stable, snake_case"),
            "message": Schema(type=OpenAPIType.STRING),
        },
        description="Every error response",
    )
    for path, item in (document.paths or {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            statuses: dict[str, str] = {}
            if path.startswith(("/v1/", "/api/v1/")):
                statuses |= GUARDED
                if operation.request_body is not None:
                    statuses |= WITH_BODY
                    content = _content_types(operation.request_body)
                    if "multipart/form-data" in content:
                        statuses |= UPLOAD
            if path == "/readyz":
                statuses |= READY
            responses = dict(operation.responses or {})
            for status, description in statuses.items():
                responses[status] = _error(description)
            operation.responses = responses


def _content_types(body: object) -> set[str]:
    return set(getattr(body, "content", None) or {})


def _error(description: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        content={
            "application/json": OpenAPIMediaType(
                schema=Reference(ref=f"#/components/schemas/{ERROR_SCHEMA}")
            )
        },
    )
