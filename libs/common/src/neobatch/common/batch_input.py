"""Batch input validation: JSONL lines → requests, or OpenAI-style line-numbered errors. Pure.

A batch with any invalid line fails as a whole before anything is dispatched (OpenAI
behaviour), so the validator sees the full file first; the runner streams the file through
`InputValidator.feed` once to validate and again through `parse_request` to dispatch, so
request bodies are never all held in memory.

Line numbers in errors are 1-based file lines; `line_index` (0-based) identifies a request in
checkpoints and output files. Blank lines are skipped but still counted as lines.

OpenAI's per-batch limits hold here, for the console (at job creation) and the agent (before
dispatch) alike: at most 50,000 requests (`too_many_requests`, reported at the line of the
50,001st) and 200 MB of input (`file_too_large`, at the line that crosses it). The validator
keeps only the custom ids it has seen and its counters, never a request body.
"""

from __future__ import annotations

from typing import Any

import msgspec

# Errors stored on the batch are capped so a broken 50,000-line file cannot bloat the document;
# the message still says how many lines were bad.
MAX_REPORTED_ERRORS = 100
REQUIRED_FIELDS = ("custom_id", "method", "url", "body")
# OpenAI Batch API limits per input file; the byte limit matches the console's upload limit.
MAX_REQUESTS = 50_000
MAX_INPUT_BYTES = 200 * 1024 * 1024


class BatchRequest(msgspec.Struct, frozen=True, kw_only=True):
    line_index: int
    custom_id: str
    method: str
    url: str
    # The validator (and tests) give the decoded object; the dispatch pass (`parse_request`)
    # the body's JSON text as it is in the file, so a request is not decoded and re-encoded.
    body: dict[str, Any] | msgspec.Raw


class _DispatchLine(msgspec.Struct):
    """What the dispatch pass reads of a line the validator already accepted."""

    custom_id: str
    url: str
    body: msgspec.Raw


_DISPATCH_LINE = msgspec.json.Decoder(_DispatchLine)


class LineError(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the OpenAI batch `errors.data` list."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None


class ValidationReport(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    errors: list[LineError]
    invalid_lines: int

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One sentence for `error_message`; the details are in `errors`."""
        if self.ok:
            return ""
        if self.invalid_lines == 0:
            return self.errors[0].message
        lines = "line" if self.invalid_lines == 1 else "lines"
        first = self.errors[0]
        return (
            f"{self.invalid_lines} invalid {lines} in the input file; "
            f"first at line {first.line}: {first.message}"
        )


def normalize_path(url: str) -> str:
    return url.strip().rstrip("/") or "/"


def is_blank(raw: bytes) -> bool:
    return not raw.strip()


def strip_bom(raw: bytes, line_index: int) -> bytes:
    # Editors on Windows save JSONL with a UTF-8 byte-order mark, which JSON does not allow.
    return raw.removeprefix(b"\xef\xbb\xbf") if line_index == 0 else raw


def _check_object(obj: Any, endpoint: str) -> tuple[str, str, str | None] | None:
    """The (code, message, param) of the first problem with a decoded line, or None."""
    if not isinstance(obj, dict):
        return ("invalid_request", "line must be a JSON object", None)
    for name in REQUIRED_FIELDS:
        if name not in obj or obj[name] is None:
            return ("missing_required_parameter", f"missing required parameter '{name}'", name)
    custom_id = obj["custom_id"]
    if not isinstance(custom_id, str) or not custom_id:
        return ("invalid_type", "'custom_id' must be a non-empty string", "custom_id")
    method = obj["method"]
    if not isinstance(method, str) or method.upper() != "POST":
        return ("invalid_method", f"'method' must be POST, got {method!r}", "method")
    url = obj["url"]
    if not isinstance(url, str) or normalize_path(url) != normalize_path(endpoint):
        return (
            "mismatched_endpoint",
            f"'url' {url!r} does not match the batch endpoint {endpoint!r}",
            "url",
        )
    if not isinstance(obj["body"], dict):
        return ("invalid_type", "'body' must be a JSON object", "body")
    return None


def parse_request(raw: bytes, line_index: int) -> BatchRequest:
    """Decode a line the validator already accepted (the dispatch pass).

    `body` stays raw JSON (`msgspec.Raw`, a view of `raw`): the validator checked it is an
    object, and the engine client sends it as it is when its model is the served one.
    """
    line = _DISPATCH_LINE.decode(strip_bom(raw, line_index))
    return BatchRequest(
        line_index=line_index,
        custom_id=line.custom_id,
        method="POST",
        url=normalize_path(line.url),
        body=line.body,
    )


class InputValidator:
    """Feed every line of the input file, in order, then read `report()`."""

    def __init__(
        self,
        endpoint: str,
        *,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_INPUT_BYTES,
    ) -> None:
        self._endpoint = endpoint
        self._max_requests = max_requests
        self._max_bytes = max_bytes
        self._seen: set[str] = set()
        self._errors: list[LineError] = []
        self._invalid_lines = 0
        self._total = 0
        self._bytes = 0
        self._over_bytes = False

    def _reject(self, line: int, code: str, message: str, param: str | None) -> None:
        self._invalid_lines += 1
        if len(self._errors) < MAX_REPORTED_ERRORS:
            self._errors.append(LineError(code=code, message=message, line=line, param=param))

    def feed(self, line_index: int, raw: bytes) -> BatchRequest | None:
        """Validate one line; returns the request when it is valid (None for blank/bad)."""
        line = line_index + 1
        self._bytes += len(raw) + 1  # with its newline
        if self._bytes > self._max_bytes and not self._over_bytes:
            self._over_bytes = True
            self._reject(
                line,
                "file_too_large",
                f"the input file is larger than {_mb(self._max_bytes)}, the limit per batch",
                None,
            )
        raw = strip_bom(raw, line_index)
        if is_blank(raw):
            return None
        try:
            obj = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            self._reject(line, "invalid_json_line", "line is not valid JSON", None)
            return None
        problem = _check_object(obj, self._endpoint)
        if problem is not None:
            self._reject(line, *problem)
            return None
        custom_id = obj["custom_id"]
        if custom_id in self._seen:
            self._reject(
                line,
                "duplicate_custom_id",
                f"custom_id {custom_id!r} is used by an earlier line",
                "custom_id",
            )
            return None
        self._seen.add(custom_id)
        self._total += 1
        if self._total == self._max_requests + 1:
            self._reject(
                line,
                "too_many_requests",
                f"the input file has more than {self._max_requests:,} requests, the limit per "
                "batch",
                None,
            )
        if self._total > self._max_requests:
            return None
        return BatchRequest(
            line_index=line_index,
            custom_id=custom_id,
            method="POST",
            url=normalize_path(obj["url"]),
            body=obj["body"],
        )

    def report(self) -> ValidationReport:
        errors = list(self._errors)
        if not errors and self._total == 0:
            errors.append(LineError(code="empty_file", message="the input file has no requests"))
        return ValidationReport(total=self._total, errors=errors, invalid_lines=self._invalid_lines)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB" if n >= 1024 * 1024 else f"{n:,} bytes"


def validate_lines(
    lines: list[bytes], endpoint: str
) -> tuple[list[BatchRequest], ValidationReport]:
    """Validate a whole in-memory file (tests and small inputs)."""
    validator = InputValidator(endpoint)
    requests = [r for i, raw in enumerate(lines) if (r := validator.feed(i, raw)) is not None]
    return requests, validator.report()
