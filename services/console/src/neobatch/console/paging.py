"""Cursor paging shared by every list (jobs, batches, files, models, templates, keys): a page starts
after the last id of the previous one, in a (time, _id) order that stays stable when times
tie; pages are bounded (`PageLimit`). Pure; the read itself is `page_store.find_page`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Protocol

import msgspec
from litestar.params import QueryParameter

# `?limit=`: 20 by default, at most 100 (AIBrix's and OpenAI's list bounds); past them a 400.
PageLimit = Annotated[int, QueryParameter(ge=1, le=100)]


class PageEnds(msgspec.Struct, kw_only=True):
    """The paging fields every list answer carries (its rows are the subclass's `data`, or
    `jobs` on AIBrix's job list): whether more rows follow, and the page's first and last ids
    (pass `last_id` as `after` for the next page; None on an empty page)."""

    has_more: bool
    first_id: str | None
    last_id: str | None


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


def page_ends(data: Sequence[_HasId]) -> dict[str, str | None]:
    """`first_id` and `last_id` of a page (None on an empty one)."""
    return {
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
    }


def rows_after(at: Any, doc_id: str, field: str, *, ascending: bool) -> dict[str, Any]:
    """The Mongo filter for rows strictly after (`field`, _id) = (at, doc_id) in that order."""
    op = "$gt" if ascending else "$lt"
    return {"$or": [{field: {op: at}}, {field: at, "_id": {op: doc_id}}]}
