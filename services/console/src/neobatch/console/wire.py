"""What every feature's request and response bodies share: constrained field types and
Unix-second times. Pure.

Constraints live in the types so a violation is a 400 naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from msgspec import Meta

Text = Annotated[str, Meta(max_length=512)]
Label = Annotated[str, Meta(max_length=128)]
Endpoint = Annotated[str, Meta(pattern=r"^/v1/[A-Za-z0-9_./-]+$", max_length=128)]


def unix_seconds(at: datetime) -> int:
    """Times go on the wire as whole Unix seconds (AIBrix and OpenAI both)."""
    return int(at.timestamp())


def unix_seconds_or_none(value: object) -> int | None:
    """A timestamp a document may not have yet: unset (or not a time) is null on the wire."""
    return unix_seconds(value) if isinstance(value, datetime) else None
