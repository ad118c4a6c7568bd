"""The one paged read every console list uses (jobs, batches, files, models, templates).

A page is `limit` rows after a cursor row, in (time, _id) order, fetched with one query (plus
one to find the cursor row). The cursor row is looked up *within the caller's filter*, so a
row of another project (or one the caller may not see) is exactly as unknown as a missing
id: an empty page, by the same path.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from neobatch.console.paging import rows_after

Document = dict[str, Any]


async def find_page(
    collection: AsyncCollection[Document],
    scope: Document,
    *,
    after: Document | None,
    limit: int,
    field: str = "created_at",
    ascending: bool = False,
    projection: Document | None = None,
    cursor_scope: Document | None = None,
) -> tuple[list[Document], bool]:
    """A page of the rows matching `scope`, after the row `after` selects (e.g. `{"_id": id}`);
    and whether more follow. An `after` outside `cursor_scope` (default: `scope`) gives an
    empty page; a filter that a row may leave between two pages (a job's status) belongs in
    `scope` only, with the caller's own bounds in `cursor_scope`."""
    query = scope
    if after:
        within = scope if cursor_scope is None else cursor_scope
        cursor_row = await collection.find_one({"$and": [within, after]}, {field: 1})
        if cursor_row is None:
            return [], False
        start = rows_after(cursor_row.get(field), cursor_row["_id"], field, ascending=ascending)
        query = {"$and": [scope, start]}
    order = ASCENDING if ascending else DESCENDING
    cursor = collection.find(query, projection).sort([(field, order), ("_id", order)])
    docs = await cursor.limit(limit + 1).to_list(limit + 1)
    return docs[:limit], len(docs) > limit
