"""Checking an upload while it streams: size limit and "is this JSONL" (DESIGN rule 6).

The content passes through in chunks on its way to the file store; only the first
non-empty line is held, to parse it, and no longer than a line may be
(`NEOBATCH_MAX_INPUT_LINE_BYTES`); it must be UTF-8, nested at most `MAX_JSON_DEPTH` deep, and
a JSON object. Later lines are checked when a batch is created on the file (per-line errors). A failure raises from inside the stream, so the
store aborts the partial file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import msgspec

from neobatch.common.batch_input import MAX_LINE_BYTES
from neobatch.common.jsonbounds import MAX_JSON_DEPTH, is_utf8, too_deep
from neobatch.console.errors import InvalidFile, TooLarge

# Only the top-level keys are decoded; values stay raw JSON text.
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])

READ_CHUNK_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class Readable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


def check_filename(filename: str) -> None:
    if not filename.lower().endswith(".jsonl"):
        raise InvalidFile(f"file: {filename!r} is not a .jsonl file")


def check_first_line(line: bytes) -> None:
    line = line.removeprefix(_BOM)
    if not is_utf8(line):
        raise InvalidFile("file: line 1 is not valid UTF-8")
    if too_deep(line):
        raise InvalidFile(f"file: line 1 nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        _TOP_LEVEL.decode(line)
    except msgspec.ValidationError:
        raise InvalidFile(
            "file: line 1 is not a JSON object; each line must be one request"
        ) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise InvalidFile(f"file: line 1 is not valid JSON ({exc})") from None


async def checked_chunks(
    source: Readable, max_bytes: int, max_line_bytes: int = MAX_LINE_BYTES
) -> AsyncIterator[bytes]:
    """Yield `source` in chunks, failing on more than `max_bytes` or a non-JSONL start (a
    first line longer than `max_line_bytes` is not held: it fails as too long)."""
    total = 0
    head = bytearray()  # bytes before the first non-empty line is complete
    first_line_checked = False
    while chunk := await source.read(READ_CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise TooLarge(f"file: larger than the {max_bytes}-byte upload limit")
        if not first_line_checked:
            head += chunk
            first_line_checked = _check_head(head, final=False)
            if first_line_checked:
                head.clear()
            elif len(head.strip()) > max_line_bytes:
                raise InvalidFile(f"file: line 1 is longer than {max_line_bytes:,} bytes")
        yield chunk
    if not first_line_checked and not _check_head(head, final=True):
        raise InvalidFile("file: is empty; expected one JSON request per line")


def _check_head(head: bytearray, *, final: bool) -> bool:
    """Check the first non-empty line once it is complete; True when it was checked."""
    start = 0
    while (newline := head.find(b"\n", start)) >= 0:
        line = bytes(head[start:newline]).strip()
        if line:
            check_first_line(line)
            return True
        start = newline + 1
    rest = bytes(head[start:]).strip()
    if final and rest:
        check_first_line(rest)
        return True
    return False
