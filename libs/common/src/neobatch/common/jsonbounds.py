"""Bounds on untrusted JSON: nesting depth, UTF-8, integers BSON can store. Pure.

msgspec decodes nesting deeper than the interpreter's recursion limit by raising
RecursionError (a 500 in a server), at a depth that depends on the caller's stack. The
console refuses nesting past `MAX_JSON_DEPTH` before anything decodes it, the same way for
an HTTP body and for a batch input line, so what the console accepts the runtime-agent does
too. OpenAI's structured outputs allow 10 levels of schema nesting (about 25 JSON levels with
the request around it); 128 leaves room and stays far below the decoder's limit.

`too_deep` does its work in C (bytes methods and one regular expression without
backtracking), linear in the input: under a second for a 16 MiB line of brackets.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

MAX_JSON_DEPTH = 128
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_ESCAPED_BACKSLASH = b"\\\\"
_ESCAPED_QUOTE = b'\\"'
# The shape of a text: its quotes and brackets, braces as brackets (`{"a": [1]}` → `[""[]]`).
_DELETE = bytes(set(range(256)) - set(b'"[]{}'))
_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_STRING = re.compile(rb'"[^"]*"')


def _nested(levels: int) -> re.Pattern[bytes]:
    """A regular expression matching balanced brackets at most `levels` deep.

    Possessive repeats never backtrack, so a match is linear in the text.
    """
    pattern = b""
    for _ in range(levels):
        pattern = rb"(?:\[" + pattern + rb"\])*+"
    return re.compile(pattern)


_WITHIN_LIMIT = _nested(MAX_JSON_DEPTH)


def too_deep(raw: bytes | memoryview, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text `raw` nests arrays and objects more than `limit` deep.

    Brackets inside strings do not count. Malformed JSON is not too deep: the decoder
    reports what is wrong with it.
    """
    raw = bytes(raw)
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    # Escapes only occur inside strings: without them every quote opens or closes one.
    text = raw.replace(_ESCAPED_BACKSLASH, b"").replace(_ESCAPED_QUOTE, b"")
    shape = text.translate(_TO_SQUARE, _DELETE)
    # `""` is an empty string or two strings with nothing structural between them.
    shape = shape.replace(b'""', b"")
    if b'"' in shape:
        shape = _STRING.sub(b"", shape)
    within = _WITHIN_LIMIT if limit == MAX_JSON_DEPTH else _nested(limit)
    match = within.match(shape)
    if match is not None and match.end() == len(shape):
        return False
    # Deeper than `limit`, or not balanced: the decoder (which allocates nothing for a Raw)
    # tells malformed from deep.
    try:
        msgspec.json.decode(raw, type=msgspec.Raw)
    except RecursionError:
        return True
    except (msgspec.DecodeError, UnicodeDecodeError):
        return False
    return True


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_stored_value(value: Any, *, max_bytes: int, what: str) -> None:
    """Raise ValueError unless a decoded JSON value can be stored as it is: every integer
    fits int64 (BSON) and it is at most `max_bytes` as JSON. For free-form fields
    (`provider_config`) the schema cannot type."""
    size = len(msgspec.json.encode(value))
    if size > max_bytes:
        raise ValueError(f"{what} is {size:,} bytes as JSON; at most {max_bytes:,} are allowed")
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, int) and not INT64_MIN <= item <= INT64_MAX:
            raise ValueError(f"{what} holds an integer outside the 64-bit range")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
