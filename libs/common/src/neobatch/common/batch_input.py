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
keeps only the custom ids it has seen (a digest of each, 16 to 32 bytes: `seen_ids.SeenIds`) and
its counters, never a request body.

Work per line is bounded whatever the line holds (issue 13: a line of 30 million `{}` cost the
console 2.4 GB): a line longer than `max_line_bytes` (`line_too_long`) is refused before it is
decoded (the reader hands over only its first `max_line_bytes + 1` bytes); a line that is not
UTF-8 is `invalid_json_line`; nesting past `MAX_JSON_DEPTH` is `json_too_deep`; and a line is
decoded only to its top-level keys, the body staying raw JSON text (`msgspec.Raw`), so no
line ever becomes millions of Python objects.
"""

from __future__ import annotations

from typing import Any

import msgspec

from neobatch.common.jsonbounds import MAX_JSON_DEPTH, is_utf8, too_deep
from neobatch.common.seen_ids import SeenIds

# Errors stored on the batch are capped so a broken 50,000-line file cannot bloat the document;
# the message still says how many lines were bad.
MAX_REPORTED_ERRORS = 100
REQUIRED_FIELDS = ("custom_id", "method", "url", "body")
# OpenAI Batch API limits per input file; the byte limit matches the console's upload limit.
MAX_REQUESTS = 50_000
MAX_INPUT_BYTES = 200 * 1024 * 1024
# A request line's default size limit (NEOBATCH_MAX_INPUT_LINE_BYTES): room for a chat
# request carrying a few base64 images; OpenAI states only the 200 MB per file.
MAX_LINE_BYTES = 16 * 1024 * 1024


class BatchRequest(msgspec.Struct, frozen=True, kw_only=True):
    line_index: int
    custom_id: str
    method: str
    url: str
    # The validator and the dispatch pass (`parse_request`) give the body's JSON text as it is
    # in the file, so a request is not decoded and re-encoded; tests may give an object.
    body: dict[str, Any] | msgspec.Raw


class _DispatchLine(msgspec.Struct):
    """What the dispatch pass reads of a line the validator already accepted."""

    custom_id: str
    url: str
    body: msgspec.Raw


_DISPATCH_LINE = msgspec.json.Decoder(_DispatchLine)
# What the validator decodes of a line: its top-level keys, each value as raw JSON text.
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])
_STR = msgspec.json.Decoder(str)


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


def _text(value: msgspec.Raw) -> str | None:
    """A raw JSON value as a string, or None when it is not one (decoded only if it is)."""
    if _first(value) != b'"':
        return None
    return _STR.decode(value)


def _first(value: msgspec.Raw) -> bytes:
    return bytes(memoryview(value)[:1])


def _is_null(value: msgspec.Raw) -> bool:
    view = memoryview(value)
    return view.nbytes == 4 and bytes(view) == b"null"


def _check_object(
    fields: dict[str, msgspec.Raw], endpoint: str
) -> tuple[str, str, str | None] | None:
    """The (code, message, param) of the first problem with a line's top-level fields."""
    for name in REQUIRED_FIELDS:
        if name not in fields or _is_null(fields[name]):
            return ("missing_required_parameter", f"missing required parameter '{name}'", name)
    custom_id = _text(fields["custom_id"])
    if not custom_id:
        return ("invalid_type", "'custom_id' must be a non-empty string", "custom_id")
    method = _text(fields["method"])
    if method is None or method.upper() != "POST":
        shown = method if method is not None else _shown(fields["method"])
        return ("invalid_method", f"'method' must be POST, got {shown!r}", "method")
    url = _text(fields["url"])
    if url is None or normalize_path(url) != normalize_path(endpoint):
        shown = url if url is not None else _shown(fields["url"])
        return (
            "mismatched_endpoint",
            f"'url' {shown!r} does not match the batch endpoint {endpoint!r}",
            "url",
        )
    if _first(fields["body"]) != b"{":
        return ("invalid_type", "'body' must be a JSON object", "body")
    return None


def _shown(value: msgspec.Raw) -> str:
    """A non-string value as the error shows it: its JSON text, cut short."""
    text = bytes(memoryview(value)[:41]).decode("utf-8", "replace")
    return text if len(text) <= 40 else text[:40] + "…"


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
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self._endpoint = endpoint
        self._max_requests = max_requests
        self._max_bytes = max_bytes
        self._max_line_bytes = max_line_bytes
        self._seen = SeenIds()
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
        fields = self._top_level(line, strip_bom(raw, line_index))
        if fields is None:
            return None
        problem = _check_object(fields, self._endpoint)
        if problem is not None:
            self._reject(line, *problem)
            return None
        custom_id = _STR.decode(fields["custom_id"])
        if not self._seen.add(custom_id):
            self._reject(
                line,
                "duplicate_custom_id",
                f"custom_id {custom_id!r} is used by an earlier line",
                "custom_id",
            )
            return None
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
            url=normalize_path(_STR.decode(fields["url"])),
            body=fields["body"],
        )

    def _top_level(self, line: int, raw: bytes) -> dict[str, msgspec.Raw] | None:
        """A line's top-level fields, raw; None (with the line rejected) if it has none."""
        if len(raw) > self._max_line_bytes:
            self._reject(
                line,
                "line_too_long",
                f"line is longer than {self._max_line_bytes:,} bytes, the limit per request",
                None,
            )
            return None
        if is_blank(raw):
            return None
        if not is_utf8(raw):
            self._reject(line, "invalid_json_line", "line is not valid UTF-8", None)
            return None
        if too_deep(raw):
            self._reject(
                line, "json_too_deep", f"line nests deeper than {MAX_JSON_DEPTH} levels", None
            )
            return None
        try:
            return _TOP_LEVEL.decode(raw)
        except msgspec.ValidationError:
            self._reject(line, "invalid_request", "line must be a JSON object", None)
        except (msgspec.DecodeError, RecursionError):
            self._reject(line, "invalid_json_line", "line is not valid JSON", None)
        return None

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
