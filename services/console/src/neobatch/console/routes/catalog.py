"""`GET /api/v1/catalog`: the GPU offers of every configured cloud provider, cheapest first.

The resource-manager owns the data: it refreshes the `offers` collection (a cache of each
provider's live catalog: GPU type, family, count, region, hourly price, availability); this
route only reads it. `?family=H100` and `?available=true` filter.
"""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromQuery

from neobatch.console.store import ConsoleStore

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
    store: NamedDependency[ConsoleStore],
    family: FromQuery[str | None] = None,
    available: FromQuery[bool | None] = None,
) -> dict[str, Any]:
    docs = await store.list_offers(family, available)
    data = [
        {"id": doc["_id"], **{k: doc.get(k) for k in _FIELDS}, "updated_at": doc.get("updated_at")}
        for doc in docs
    ]
    return {"object": "list", "data": data}
