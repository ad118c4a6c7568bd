"""What a simulated provider bills: one record per machine, from `billed_from` to the terminate
call, in the provider's billing increment (a started increment is billed in full). RunPod bills
per second from the create call; Lambda per minute from the moment the instance is up (its docs:
"billing begins the moment you launch an instance and the instance passes health checks"), so a
Lambda machine that never booted costs nothing."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class BillingRecord:
    """What the provider bills for one machine: billed_from → terminated (None while it lives)."""

    machine: str
    name: str
    gpu: str
    gpu_count: int
    region: str
    price_per_hour: float
    created_at: float  # Unix seconds
    billed_from: float | None  # Unix seconds; None: billing has not begun (Lambda: not booted)
    terminated_at: float | None = None

    def billed(self, increment_seconds: int, now: float) -> dict[str, Any]:
        end = self.terminated_at if self.terminated_at is not None else now
        elapsed = 0.0 if self.billed_from is None else end - self.billed_from
        seconds = billed_seconds(elapsed, increment_seconds)
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
