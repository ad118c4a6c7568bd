"""What every feature's request and response bodies share: constrained field types and
Unix-second times. Pure.

Constraints live in the types so a violation is a 400 naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from msgspec import Meta

from neobatch.common.jsonbounds import INT64_MAX, INT64_MIN

Text = Annotated[str, Meta(max_length=512)]
Label = Annotated[str, Meta(max_length=128)]
Endpoint = Annotated[str, Meta(pattern=r"^/v1/[A-Za-z0-9_./-]+$", max_length=128)]
# Any integer a client may send is stored in MongoDB: BSON holds 64-bit integers.
Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
# A free-form JSON field (`provider_config`): at most this much as JSON.
MAX_FREE_FORM_BYTES = 16 * 1024


def unix_seconds(at: datetime) -> int:
    """Times go on the wire as whole Unix seconds (AIBrix and OpenAI both)."""
    return int(at.timestamp())


def unix_seconds_or_none(value: object) -> int | None:
    """A timestamp a document may not have yet: unset (or not a time) is null on the wire."""
    return unix_seconds(value) if isinstance(value, datetime) else None
