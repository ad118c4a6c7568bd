"""A job's bill: what its machines cost, from the provisions the resource-manager recorded. Pure.

Each machine is billed from its lease (the provider accepted the create call; Lambda: from the
machine being ready, as Lambda bills from when the instance is up) to its confirmed release (the
provider said it is gone), in the provider's billing increment (`common/billing.py`: RunPod
per second, Lambda Cloud per minute, a started increment in full; the SSH pool per second), at the
price per hour it was leased at (the offer's; the SSH pool's operator-set price). A machine not yet
released is billed up to `now` and the bill is not `final`.

Where the time went, per machine (the parts add up to `held_seconds`):
- `startup_seconds`: lease → the machine is running (provider boot);
- `idle_before_seconds`: running → the first request was sent (engine start-up and hand-off);
- `busy_seconds`: first request sent → last answer received;
- `idle_after_seconds`: last answer → release confirmed (output files, engine stop, release).
The first request and last answer are the batch's dispatch times when the runtime-agent reported
them, else the job's `in_progress_at` and `finalizing_at`. A job that went through several
machines (one lost, then a replacement) knows them only for the machine that ran the batch last;
on the others the three are null (their billed time is still counted in full). A job on several
machines at once (issue 15) has them null on every machine: the batch's times are not any one's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from neobatch.common.billing import machine_cost
from neobatch.console.wire import unix_seconds_or_none

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MachineBill(msgspec.Struct, kw_only=True):
    provision_id: str
    provider: str
    gpu_type: str
    gpu_count: int
    region: str
    price_per_hour: float  # USD for the whole machine, as leased
    increment_seconds: int  # the provider's billing increment
    leased_at: int | None
    ready_at: int | None
    release_requested_at: int | None
    released_at: int | None  # release confirmed; null while the machine is still held
    held_seconds: float  # lease → confirmed release (or now): the four parts below add up to it
    billed_from: int | None  # the lease, or (Lambda) the machine ready; null: never billed
    billed_seconds: int  # billed_from → release, in whole billing increments
    startup_seconds: float | None
    idle_before_seconds: float | None
    busy_seconds: float | None
    idle_after_seconds: float | None
    usd: float


class BillTokens(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class Bill(msgspec.Struct, kw_only=True):
    """Every job carries one (empty before any machine was leased)."""

    currency: str = "USD"
    final: bool  # every machine's release is confirmed: the bill will not change
    machines: list[MachineBill]
    machine_seconds: int  # billed, all machines
    idle_seconds: float  # idle before + after, all machines where known
    total_usd: float
    tokens: BillTokens
    usd_per_million_output_tokens: float | None  # null without output tokens


def _span(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, (end - start).total_seconds()), 3)


def _at(doc: dict[str, Any], field: str) -> datetime | None:
    value = doc.get(field)
    return value if isinstance(value, datetime) else None


def machine_bill(
    provision: dict[str, Any],
    dispatch: tuple[datetime | None, datetime | None] | None,
    now: datetime | None,
) -> MachineBill | None:
    """One leased machine's bill; None when nothing was ever leased for the provision.

    `dispatch` is (first request sent, last answer received) when this machine ran the batch.
    """
    cost = machine_cost(provision, now)
    leased = _at(provision, "leased_at")
    if cost is None or leased is None:
        return None
    lease = provision.get("lease") or {}
    ready = _at(provision, "running_at")
    released = _at(provision, "released_at")
    first, last = dispatch or (None, None)
    return MachineBill(
        provision_id=provision["_id"],
        provider=cost.provider,
        gpu_type=cost.gpu_type,
        gpu_count=int(lease.get("gpu_count") or 0),
        region=lease.get("region") or provision.get("region") or "",
        price_per_hour=cost.price_per_hour,
        increment_seconds=cost.increment_seconds,
        leased_at=unix_seconds_or_none(leased),
        ready_at=unix_seconds_or_none(ready),
        release_requested_at=unix_seconds_or_none(provision.get("releasing_at")),
        released_at=unix_seconds_or_none(released),
        held_seconds=_span(leased, cost.until) or 0.0,
        billed_from=unix_seconds_or_none(cost.billed_from),
        billed_seconds=cost.billed_seconds,
        startup_seconds=_span(leased, ready),
        idle_before_seconds=_span(ready, first),
        busy_seconds=_span(first, last),
        idle_after_seconds=_span(last, released) if released else None,
        usd=cost.usd,
    )


def dispatch_times(job: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """(first request sent, last answer received): the agent's report, else the job's steps."""
    first = _at(job, "dispatch_started_at") or _at(job, "in_progress_at")
    last = _at(job, "dispatch_ended_at") or _at(job, "finalizing_at")
    return first, last


def bill_of(
    job: dict[str, Any], provisions: Sequence[dict[str, Any]], now: datetime | None
) -> Bill:
    """The job's bill from its provisions (any order), at `now` (None: machines not yet
    released are billed up to the last time the resource-manager wrote them)."""
    ordered = sorted(provisions, key=lambda p: (_at(p, "leased_at") or EPOCH, p["_id"]))
    machines = []
    for provision in ordered:
        # The batch's dispatch times are one machine's only when the job had one at a time.
        alone = int((job.get("resource_request") or {}).get("replicas") or 1) == 1
        ran_batch = alone and provision["_id"] == job.get("provision_id")
        machine = machine_bill(provision, dispatch_times(job) if ran_batch else None, now)
        if machine is not None:
            machines.append(machine)
    usage = job.get("usage") or {}
    output_tokens = int(usage.get("output_tokens") or 0)
    total = round(sum(m.usd for m in machines), 6)
    idle = sum((m.idle_before_seconds or 0) + (m.idle_after_seconds or 0) for m in machines)
    return Bill(
        final=all(m.released_at is not None for m in machines),
        machines=machines,
        machine_seconds=sum(m.billed_seconds for m in machines),
        idle_seconds=round(idle, 3),
        total_usd=total,
        tokens=BillTokens(
            prompt_tokens=int(usage.get("input_tokens") or 0),
            completion_tokens=output_tokens,
            cached_tokens=int(usage.get("cached_tokens") or 0),
        ),
        usd_per_million_output_tokens=(
            round(total / output_tokens * 1_000_000, 6) if output_tokens else None
        ),
    )
