"""Local validation of a batch input file with the server's own rules (`neobatch.common.
batch_input`, the code the console runs at job creation and the agent before dispatch), so a
bad line is named with its line number before anything is uploaded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec

from neobatch.common.batch_input import (
    MAX_INPUT_BYTES,
    MAX_LINE_BYTES,
    InputValidator,
    ValidationReport,
    strip_bom,
)

DEFAULT_ENDPOINT = "/v1/chat/completions"
_URL = msgspec.json.Decoder(dict[str, msgspec.Raw])


@dataclass(frozen=True)
class Checked:
    report: ValidationReport
    endpoint: str
    size: int


def lines(file: IO[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """Each line without its newline; a line longer than the cap is cut to `cap + 1` bytes
    (enough for the validator to call it too long) and the rest skipped unread into memory."""
    while True:
        line = file.readline(max_line_bytes + 2)
        if not line:
            return
        if line.endswith(b"\n"):
            yield line[:-1]  # as the console splits it (a trailing \r is JSON whitespace)
            continue
        if len(line) <= max_line_bytes + 1:
            yield line  # the last line, without a newline
            continue
        yield line[: max_line_bytes + 1]
        while (rest := file.readline(1 << 20)) and not rest.endswith(b"\n"):
            pass


def endpoint_of(path: Path) -> str:
    """The `url` of the first line that has one (what the batch's endpoint must be)."""
    with open(path, "rb") as file:
        for index, raw in enumerate(lines(file)):
            if not raw.strip():
                continue
            try:
                url = msgspec.json.decode(_URL.decode(strip_bom(raw, index)).get("url", b'""'))
            except (msgspec.DecodeError, msgspec.ValidationError):
                return DEFAULT_ENDPOINT
            return url if isinstance(url, str) and url.startswith("/v1/") else DEFAULT_ENDPOINT
    return DEFAULT_ENDPOINT


def check_file(path: Path, endpoint: str | None = None) -> Checked:
    endpoint = endpoint or endpoint_of(path)
    validator = InputValidator(endpoint, max_bytes=MAX_INPUT_BYTES)
    with open(path, "rb") as file:
        for index, raw in enumerate(lines(file)):
            validator.feed(index, raw)
    return Checked(report=validator.report(), endpoint=endpoint, size=path.stat().st_size)
