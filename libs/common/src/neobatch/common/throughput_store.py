"""ThroughputStore: the `throughput_samples` collection, one document per finished batch. The
resource-manager writes it (from `batch.terminal`) and ranks offers by it; the console reads it
for quotes. Figures from the documents: `neobatch.common.costing`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from neobatch.common.costing import (
    LEARNED_WINDOW,
    Sample,
    learned_throughput,
    learned_tokens_per_request,
)
from neobatch.common.mongo import ensure_indexes

THROUGHPUT_SAMPLES = "throughput_samples"
INDEXES = [
    IndexModel(
        [("template_key", ASCENDING), ("family", ASCENDING), ("at", DESCENDING)],
        name="template_family_recent",
    ),
    IndexModel([("template_key", ASCENDING), ("at", DESCENDING)], name="template_recent"),
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
        return learned_throughput(await self.list_samples(template_key, families))

    async def find_tokens_per_request(self, template_key: str) -> float | None:
        """Output tokens per request over the template's last LEARNED_WINDOW batches (any GPU)."""
        cursor = self._samples.find(
            {"template_key": template_key}, sort=[("at", DESCENDING)], limit=LEARNED_WINDOW
        )
        return learned_tokens_per_request([_sample(doc) async for doc in cursor])

    async def list_samples(self, template_key: str, families: Sequence[str]) -> list[Sample]:
        """The template's last LEARNED_WINDOW samples per GPU family."""
        samples: list[Sample] = []
        for family in families:
            cursor = self._samples.find(
                {"template_key": template_key, "family": family},
                sort=[("at", DESCENDING)],
                limit=LEARNED_WINDOW,
            )
            samples.extend([_sample(doc) async for doc in cursor])
        return samples


def _sample(doc: dict[str, Any]) -> Sample:
    doc["batch_id"] = doc.pop("_id")
    doc.pop("at", None)
    return msgspec.convert(doc, Sample)
