"""How a leased machine is billed. Pure: the console's job bill and the billing metrics share it.

A machine is billed from its lease (the provider accepted the create call: the provision's
`leased_at`; for a provider in `BILLED_FROM_READY`, from the machine being ready, `running_at`:
Lambda bills from when the instance is up and passed its health checks) to its confirmed release (`released_at`; a machine still held: up to now), in its
provider's billing increment (a started increment in full), at the price per hour recorded in
the provision's `lease` (the offer's; the SSH pool's operator-set price).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, NamedTuple

# How each provider bills: the increment in seconds, a started increment billed in full.
# RunPod bills per second, Lambda Cloud per minute; the SSH pool's machines per second.
INCREMENTS = {"runpod": 1, "lambdaCloud": 60, "ssh": 1}
DEFAULT_INCREMENT = 1
# Providers whose billing begins when the machine is up, not at the create call.
BILLED_FROM_READY = frozenset({"lambdaCloud"})


class MachineCost(NamedTuple):
    provider: str
    gpu_type: str
    increment_seconds: int
    billed_from: datetime | None  # the lease, or the machine ready (None: billing never began)
    until: datetime  # confirmed release, or now
    elapsed_seconds: float  # billed_from → until
    billed_seconds: int
    price_per_hour: float
    usd: float


def billed_seconds(elapsed: float, increment: int) -> int:
    """Elapsed time in whole billing increments, a started one in full (as the providers bill)."""
    if elapsed <= 0:
        return 0
    return math.ceil(elapsed / increment - 1e-9) * increment


def cost_usd(seconds: int, price_per_hour: float) -> float:
    return round(seconds * price_per_hour / 3600, 6)


def machine_cost(provision: dict[str, Any], now: datetime | None) -> MachineCost | None:
    """What a provision's machine costs (up to `now` while held); None if none was leased.

    `now` None: a machine still held is billed up to the provision's last write.
    """
    leased = provision.get("leased_at")
    if not isinstance(leased, datetime):
        return None
    lease = provision.get("lease") or {}
    provider = str(lease.get("provider") or provision.get("provider") or "")
    increment = INCREMENTS.get(provider, DEFAULT_INCREMENT)
    start: datetime | None = leased
    if provider in BILLED_FROM_READY:
        ready = provision.get("running_at")
        start = ready if isinstance(ready, datetime) else None
    released = provision.get("released_at")
    end = released if isinstance(released, datetime) else now
    if end is None:
        updated = provision.get("updated_at")
        end = updated if isinstance(updated, datetime) else leased
    elapsed = 0.0 if start is None else max(0.0, (end - start).total_seconds())
    seconds = billed_seconds(elapsed, increment)
    price = float(lease.get("price_per_hour") or 0.0)
    return MachineCost(
        provider=provider,
        gpu_type=str(lease.get("gpu_type") or ""),
        increment_seconds=increment,
        billed_from=start,
        until=end,
        elapsed_seconds=elapsed,
        billed_seconds=seconds,
        price_per_hour=price,
        usd=cost_usd(seconds, price),
    )


def month_start(now: datetime) -> datetime:
    """The first instant of `now`'s UTC month."""
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def spend_of(provisions: list[dict[str, Any]], now: datetime) -> float:
    """What these machines cost (held ones up to `now`)."""
    costs = (machine_cost(p, now) for p in provisions)
    return sum(cost.usd for cost in costs if cost is not None)
