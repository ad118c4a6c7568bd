"""`neobatch merge`: one result line per request of a job's input, from the job and its retry
chain. Pure: the caller reads the files and hands their lines over.

Which result a request gets: the newest success in the chain, else its newest error (a line
still failed after every retry comes from the newest error file that has it), else a line
saying no job of the chain finished it. "Newest" is the chain's creation order. A success is
never replaced by a later error: two retries of one job may both run a line, and an answer
once had is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import msgspec

# The most jobs a chain walk reads (the original and its retries, theirs, ...).
MAX_CHAIN_JOBS = 100
_BOM = b"\xef\xbb\xbf"


class _Response(msgspec.Struct):
    status_code: int | None = None


class _ResultLine(msgspec.Struct):
    custom_id: str
    response: _Response | None = None
    error: dict[str, Any] | None = None


class _InputLine(msgspec.Struct):
    custom_id: str


_RESULT = msgspec.json.Decoder(_ResultLine)
_INPUT = msgspec.json.Decoder(_InputLine)


class Where(NamedTuple):
    """A result line's place: which file, at what offset, how long; whether it succeeded."""

    file: int
    offset: int
    length: int
    ok: bool


def input_custom_id(raw: bytes, line_index: int) -> str | None:
    line = raw.removeprefix(_BOM) if line_index == 0 else raw
    try:
        return _INPUT.decode(line).custom_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def result_of(raw: bytes) -> tuple[str, bool] | None:
    """A result line's (custom_id, succeeded), or None when it is not one."""
    try:
        line = _RESULT.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    status = line.response.status_code if line.response is not None else None
    return line.custom_id, status is not None and 200 <= status < 300 and not line.error


class ResultIndex:
    """Where each custom_id's chosen result is. Add files oldest job first."""

    def __init__(self) -> None:
        self.where: dict[str, Where] = {}

    def add(self, file: int, lines: Iterable[tuple[int, bytes]]) -> None:
        """`lines`: each line of file number `file` with its byte offset (no newline)."""
        for offset, raw in lines:
            found = result_of(raw)
            if found is None:
                continue
            custom_id, ok = found
            current = self.where.get(custom_id)
            if ok or current is None or not current.ok:
                self.where[custom_id] = Where(file, offset, len(raw), ok)


def no_result_line(custom_id: str) -> bytes:
    error = {
        "code": "no_result",
        "message": "no job of the retry chain finished this request",
    }
    line = {"id": None, "custom_id": custom_id, "response": None, "error": error}
    return json.dumps(line, separators=(",", ":")).encode()


class Merged(NamedTuple):
    custom_id: str
    line: bytes  # without its newline
    kind: str  # "succeeded" | "failed" | "missing"


def merged_lines(
    input_lines: Iterable[bytes], index: ResultIndex, read: Callable[[Where], bytes]
) -> Iterator[Merged]:
    """One line per custom_id of the input, in input order (a repeated id: its first place)."""
    seen: set[str] = set()
    for line_index, raw in enumerate(input_lines):
        if not raw.strip():
            continue
        custom_id = input_custom_id(raw, line_index)
        if custom_id is None or custom_id in seen:
            continue
        seen.add(custom_id)
        where = index.where.get(custom_id)
        if where is None:
            yield Merged(custom_id, no_result_line(custom_id), "missing")
        else:
            yield Merged(custom_id, read(where), "succeeded" if where.ok else "failed")


def chain_order(jobs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chain's jobs oldest first (creation time; ties keep the walk's order, in which a
    retry always comes after the job it retries)."""
    walked = list(jobs)
    return [
        job
        for _, job in sorted(enumerate(walked), key=lambda p: (p[1].get("created_at") or 0, p[0]))
    ]
