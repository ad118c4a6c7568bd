"""Input validation: OpenAI-style, line-numbered errors; tables only."""

from __future__ import annotations

import json

import pytest

from neobatch.common.batch_input import (
    MAX_REPORTED_ERRORS,
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
    assert requests[0].body["model"] == "m"
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
