"""Cursor paging shared by the job and file lists: a page starts after the last id of the
previous one, in a (time, _id) order that stays stable when times tie. Pure."""

from __future__ import annotations

from typing import Any


def rows_after(at: Any, doc_id: str, field: str, *, ascending: bool) -> dict[str, Any]:
    """The Mongo filter for rows strictly after (`field`, _id) = (at, doc_id) in that order."""
    op = "$gt" if ascending else "$lt"
    return {"$or": [{field: {op: at}}, {field: at, "_id": {op: doc_id}}]}
