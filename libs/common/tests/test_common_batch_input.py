"""Input validation: OpenAI-style, line-numbered errors; tables only."""

from __future__ import annotations

import json

import msgspec
import pytest

from neobatch.common.batch_input import (
    MAX_INPUT_BYTES,
    MAX_REPORTED_ERRORS,
    MAX_REQUESTS,
    InputValidator,
    parse_request,
    validate_lines,
)

CHAT = "/v1/chat/completions"


def line(cid: str = "a", /, **overrides: object) -> bytes:
    """A valid line, with fields replaced (or removed, with `...`)."""
    obj: dict[str, object] = {
        "custom_id": cid,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    for key, value in overrides.items():
        if value is ...:
            obj.pop(key)
        else:
            obj[key] = value
    return json.dumps(obj).encode()


def test_valid_file_gives_requests_in_order() -> None:
    lines = [line("a"), b"", line("b"), b"  \r", line("c", url=CHAT + "/")]
    requests, report = validate_lines(lines, CHAT)
    assert report.ok and report.total == 3
    assert [(r.line_index, r.custom_id) for r in requests] == [(0, "a"), (2, "b"), (4, "c")]
    assert msgspec.json.decode(requests[0].body)["model"] == "m"
    assert requests[2].url == CHAT  # Sent to the endpoint, whatever trailing slash it had.


@pytest.mark.parametrize(
    ("bad", "code", "param"),
    [
        (b"{not json", "invalid_json_line", None),
        (b"[1, 2]", "invalid_request", None),
        (line(custom_id=...), "missing_required_parameter", "custom_id"),
        (line(method=...), "missing_required_parameter", "method"),
        (line(url=...), "missing_required_parameter", "url"),
        (line(body=...), "missing_required_parameter", "body"),
        (line(custom_id=None), "missing_required_parameter", "custom_id"),
        (line(custom_id=7), "invalid_type", "custom_id"),
        (line(custom_id=""), "invalid_type", "custom_id"),
        (line(method="GET"), "invalid_method", "method"),
        (line(url="/v1/embeddings"), "mismatched_endpoint", "url"),
        (line(body="text"), "invalid_type", "body"),
    ],
)
def test_each_problem_is_reported_with_its_line(bad: bytes, code: str, param: str | None) -> None:
    requests, report = validate_lines([line("ok-1"), b"", bad, line("ok-2")], CHAT)
    assert not report.ok
    assert report.invalid_lines == 1
    [error] = report.errors
    assert (error.code, error.line, error.param) == (code, 3, param)
    assert "line 3" in report.summary()
    assert [r.custom_id for r in requests] == ["ok-1", "ok-2"]


def test_duplicate_custom_id_names_the_later_line() -> None:
    _, report = validate_lines([line("a"), line("b"), line("a")], CHAT)
    [error] = report.errors
    assert (error.code, error.line, error.param) == ("duplicate_custom_id", 3, "custom_id")


@pytest.mark.parametrize("lines", [[], [b""], [b"", b"   "]])
def test_empty_file(lines: list[bytes]) -> None:
    _, report = validate_lines(lines, CHAT)
    assert [e.code for e in report.errors] == ["empty_file"]
    assert report.errors[0].line is None


def test_errors_are_capped_but_counted() -> None:
    lines = [b"nope"] * (MAX_REPORTED_ERRORS + 50)
    _, report = validate_lines(lines, CHAT)
    assert len(report.errors) == MAX_REPORTED_ERRORS
    assert report.invalid_lines == MAX_REPORTED_ERRORS + 50
    assert report.summary().startswith(f"{MAX_REPORTED_ERRORS + 50} invalid lines")


def test_byte_order_mark_on_the_first_line_is_accepted() -> None:
    bom = b"\xef\xbb\xbf" + line("a")
    requests, report = validate_lines([bom, line("b")], CHAT)
    assert report.ok and [r.custom_id for r in requests] == ["a", "b"]
    assert parse_request(bom, 0).custom_id == "a"


def _many(n: int) -> list[bytes]:
    return [line(f"r{i}") for i in range(n)]


def test_fifty_thousand_requests_are_accepted() -> None:
    requests, report = validate_lines(_many(MAX_REQUESTS), CHAT)
    assert MAX_REQUESTS == 50_000
    assert report.ok and report.total == MAX_REQUESTS and len(requests) == MAX_REQUESTS


def test_the_fifty_thousand_and_first_request_fails_the_file_at_its_line() -> None:
    # A blank line in front: the error names the file line, not the request number.
    lines = [b"", *_many(MAX_REQUESTS + 1)]
    requests, report = validate_lines(lines, CHAT)
    assert not report.ok and len(requests) == MAX_REQUESTS
    [error] = report.errors
    assert (error.code, error.line, error.param) == ("too_many_requests", MAX_REQUESTS + 2, None)
    assert "50,000 requests" in error.message
    assert report.summary().endswith(error.message) and f"line {MAX_REQUESTS + 2}" in (
        report.summary()
    )


def test_too_many_requests_is_reported_once_with_the_other_problems() -> None:
    lines = [line("a"), line("b"), line("c"), b"{bad", line("d")]
    validator = InputValidator(CHAT, max_requests=2)
    for index, raw in enumerate(lines):
        validator.feed(index, raw)
    report = validator.report()
    assert [(e.code, e.line) for e in report.errors] == [
        ("too_many_requests", 3),
        ("invalid_json_line", 4),
    ]
    assert report.invalid_lines == 2


def test_input_over_the_byte_limit_fails_at_the_line_that_crosses_it() -> None:
    lines = _many(10)
    limit = sum(len(raw) + 1 for raw in lines[:6])  # the first six lines fit exactly
    validator = InputValidator(CHAT, max_bytes=limit)
    for index, raw in enumerate(lines):
        validator.feed(index, raw)
    report = validator.report()
    [error] = report.errors
    assert (error.code, error.line) == ("file_too_large", 7)
    assert MAX_INPUT_BYTES == 200 * 1024 * 1024
    assert f"{limit:,} bytes" in error.message


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (line(custom_id="\udcff").replace(b"\\udcff", b"\xff"), "invalid_json_line"),
        (b"\xff\xfe", "invalid_json_line"),
        (
            line(body={"a": [[[[[[]]]]]]}).replace(b"[[[[[[]]]]]]", b"[" * 129 + b"]" * 129),
            "json_too_deep",
        ),
        (line(body={"a": "x" * 2000}), "line_too_long"),
    ],
)
def test_hostile_line_is_its_own_error_and_not_decoded(bad: bytes, code: str) -> None:
    validator = InputValidator(CHAT, max_line_bytes=1024)
    validator.feed(0, line("a"))
    assert validator.feed(1, bad) is None
    report = validator.report()
    assert [(e.code, e.line) for e in report.errors] == [(code, 2)]


def test_a_valid_line_keeps_its_body_as_raw_json() -> None:
    [request], report = validate_lines([line("a", body={"a": [{}] * 1000})], CHAT)
    assert report.ok and isinstance(request.body, msgspec.Raw)
    assert msgspec.json.decode(request.body) == {"a": [{}] * 1000}
