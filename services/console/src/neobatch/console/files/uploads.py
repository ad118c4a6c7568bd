"""Checking an upload while it streams: size limit and "is this JSONL" (DESIGN rule 6).

The content passes through in chunks on its way to the file store; only the first
non-empty line is held, to parse it. A failure raises from inside the stream, so the
store aborts the partial file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import msgspec

from neobatch.console.errors import InvalidFile, TooLarge

READ_CHUNK_BYTES = 1024 * 1024
# The first line is buffered to parse it; past this it is not a sane request line, and
# holding more would defeat streaming.
MAX_FIRST_LINE_BYTES = 32 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class Readable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


def check_filename(filename: str) -> None:
    if not filename.lower().endswith(".jsonl"):
        raise InvalidFile(f"file: {filename!r} is not a .jsonl file")


def check_first_line(line: bytes) -> None:
    try:
        value = msgspec.json.decode(line.removeprefix(_BOM))
    except msgspec.DecodeError as exc:
        raise InvalidFile(f"file: line 1 is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidFile("file: line 1 is not a JSON object; each line must be one request")


async def checked_chunks(source: Readable, max_bytes: int) -> AsyncIterator[bytes]:
    """Yield `source` in chunks, failing on more than `max_bytes` or a non-JSONL start."""
    total = 0
    head = b""  # bytes before the first non-empty line is complete
    first_line_checked = False
    while chunk := await source.read(READ_CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise TooLarge(f"file: larger than the {max_bytes}-byte upload limit")
        if not first_line_checked:
            head += chunk
            first_line_checked = _check_head(head, final=False)
            if first_line_checked:
                head = b""
            elif len(head) > MAX_FIRST_LINE_BYTES:
                raise InvalidFile(f"file: line 1 is longer than {MAX_FIRST_LINE_BYTES} bytes")
        yield chunk
    if not first_line_checked and not _check_head(head, final=True):
        raise InvalidFile("file: is empty; expected one JSON request per line")


def _check_head(head: bytes, *, final: bool) -> bool:
    """Check the first non-empty line once it is complete; True when it was checked."""
    lines = head.split(b"\n")
    complete, rest = lines[:-1], lines[-1]
    for line in complete:
        if line.strip():
            check_first_line(line.strip())
            return True
    if final and rest.strip():
        check_first_line(rest.strip())
        return True
    return False
