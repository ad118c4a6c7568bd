"""What a simulated provider bills: one record per machine, from `billed_from` to the terminate
call, in the provider's billing increment (a started increment is billed in full). RunPod bills
per second from the create call; Lambda per minute from the moment the instance is up (its docs:
"billing begins the moment you launch an instance and the instance passes health checks"), so a
Lambda machine that never booted costs nothing."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neobatch.sim.cloud.sim import SimMachine


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


class Ledger:
    """Every machine's billing record; a terminated one is also appended to `path` as JSON."""

    def __init__(self, increment_seconds: int, path: str) -> None:
        self.increment_seconds = increment_seconds
        self.path = path
        self.records: dict[str, BillingRecord] = {}

    def opened(self, machine: SimMachine, *, bills_from_boot: bool) -> None:
        self.records[machine.id] = BillingRecord(
            machine=machine.id,
            name=machine.name,
            gpu=machine.gpu,
            gpu_count=machine.gpu_count,
            region=machine.region,
            price_per_hour=machine.price_per_hour,
            created_at=machine.created_at,
            billed_from=None if bills_from_boot else machine.created_at,
        )

    def booted(self, machine_id: str, seconds_ago: float) -> None:
        record = self.records.get(machine_id)
        if record is not None and record.billed_from is None:
            record.billed_from = time.time() - seconds_ago

    def terminated(self, machine_id: str) -> None:
        record = self.records.get(machine_id)
        if record is None or record.terminated_at is not None:
            return
        record.terminated_at = time.time()
        with open(self.path, "a") as file:
            line = record.billed(self.increment_seconds, record.terminated_at)
            file.write(json.dumps(line) + "\n")

    def report(self) -> list[dict[str, Any]]:
        """Every machine's bill so far (a live machine's up to now), oldest first."""
        now = time.time()
        ordered = sorted(self.records.values(), key=lambda r: r.created_at)
        return [record.billed(self.increment_seconds, now) for record in ordered]
