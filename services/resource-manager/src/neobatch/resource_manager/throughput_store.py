"""ThroughputStore: the `throughput_samples` collection (resource-manager's), one document per
finished batch, from which offers are ranked by cost per job (ranking.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.mongo import ensure_indexes
from neobatch.resource_manager.ranking import LEARNED_WINDOW, Sample, learned_throughput

THROUGHPUT_SAMPLES = "throughput_samples"
INDEXES = [
    IndexModel(
        [("template_key", ASCENDING), ("family", ASCENDING), ("at", DESCENDING)],
        name="template_family_recent",
    )
]


class ThroughputStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._samples = db[THROUGHPUT_SAMPLES]

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self._samples, INDEXES)

    async def save_sample(self, sample: Sample, now: datetime) -> bool:
        """Keyed by batch id: a replayed `batch.terminal` writes nothing new. True if new."""
        doc = msgspec.to_builtins(sample)
        doc["_id"] = doc.pop("batch_id")
        result = await self._samples.update_one(
            {"_id": doc["_id"]}, {"$setOnInsert": doc | {"at": now}}, upsert=True
        )
        return result.upserted_id is not None

    async def list_learned(self, template_key: str, families: Sequence[str]) -> dict[str, float]:
        """GPU family → tokens/s over the template's last LEARNED_WINDOW batches per family."""
        samples: list[Sample] = []
        for family in families:
            cursor = self._samples.find(
                {"template_key": template_key, "family": family},
                sort=[("at", DESCENDING)],
                limit=LEARNED_WINDOW,
            )
            async for doc in cursor:
                doc["batch_id"] = doc.pop("_id")
                doc.pop("at", None)
                samples.append(msgspec.convert(doc, Sample))
        return learned_throughput(samples)
