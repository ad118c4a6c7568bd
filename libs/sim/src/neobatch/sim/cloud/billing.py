"""What a simulated provider bills: one record per machine, created → terminated, in the
provider's billing increment (RunPod 1 s, Lambda 60 s; a started increment is billed in full)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class BillingRecord:
    """What the provider bills for one machine: created → terminated (None while it lives)."""

    machine: str
    name: str
    gpu: str
    gpu_count: int
    region: str
    price_per_hour: float
    created_at: float  # Unix seconds
    terminated_at: float | None = None

    def billed(self, increment_seconds: int, now: float) -> dict[str, Any]:
        end = self.terminated_at if self.terminated_at is not None else now
        seconds = billed_seconds(end - self.created_at, increment_seconds)
        return asdict(self) | {
            "increment_seconds": increment_seconds,
            "billed_seconds": seconds,
            "usd": round(seconds * self.price_per_hour / 3600, 6),
        }


def billed_seconds(elapsed: float, increment_seconds: int) -> int:
    """Elapsed time in whole billing increments, a partial one rounded up."""
    if elapsed <= 0:
        return 0
    return math.ceil(elapsed / increment_seconds - 1e-9) * increment_seconds
