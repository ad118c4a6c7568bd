"""`GET /api/v1/catalog`: the GPU offers of every configured cloud provider, cheapest first.

The resource-manager owns the data: it refreshes the `offers` collection (a cache of each
provider's live catalog: GPU type, family, count, region, hourly price, availability); this
route only reads it. `?family=H100` and `?available=true` filter.
"""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.datastructures import State

OFFERS = "offers"
_FIELDS = (
    "provider",
    "gpu_type",
    "gpu_description",
    "family",
    "gpu_count",
    "region",
    "price_per_hour",
    "available",
)


@get("/catalog")
async def list_catalog(
    state: State, family: str | None = None, available: bool | None = None
) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if family:
        query["family"] = family.upper()
    if available is not None:
        query["available"] = available
    cursor = state.runtime.db[OFFERS].find(query).sort([("price_per_hour", 1), ("_id", 1)])
    data = [
        {"id": doc["_id"], **{k: doc.get(k) for k in _FIELDS}, "updated_at": doc.get("updated_at")}
        async for doc in cursor
    ]
    return {"object": "list", "data": data}
