"""A job's cost cap while it runs (issue 16, `max_cost_usd`). Pure: no I/O.

The console refuses a job whose quote is above its cap; this is the cap on what the job
really spends. The planner knows, from `provision.running`, when the machine was leased and at
what price, so the moment the bill reaches the cap is known in advance: the *cost deadline*

    billed_from + whole billing increments that (cap - spent) buys at the price - stop_seconds

(`billed_from`, increments: `common.billing`, as the bill counts them; `spent`: machines of the
job lost earlier, counted up to when they were lost; `stop_seconds`:
`NEOBATCH_BUDGET_STOP_SECONDS`, the time a stop takes — files, engine stop, release — during
which the machine is still billed). The job's `deadline_at` is the earlier of that and its
completion-window deadline, so the existing deadline loop notices it: no new loop, no polling
of provisions. A machine priced 0 (the SSH pool by default) never reaches a cap.

A project's monthly budget (`project_budgets`, console) stops its running jobs the same way,
but only when its operator set `stop_running_jobs`: the planner looks every
`NEOBATCH_BUDGET_CHECK_SECONDS` at those projects' spend this month.

At the cost deadline the planner asks the agent to stop the batch with the reason
`budget_exceeded` (`batch.cancel_requested`): the agent keeps every finished line in the
output file, writes each unsent line to the error file with code `budget_exceeded`, stops the
engine and ends the batch `failed`/`budget_exceeded`; the planner then releases the machine
and the job is `failed` with `error_code` `budget_exceeded`. A stop, not a kill: the agent
writes the files from what it checkpointed, and a job turns terminal only with them in place.
If the agent does not answer within `NEOBATCH_CANCEL_TIMEOUT_SECONDS` the planner ends the
job itself and releases the machine (its files are attached when the agent ends late).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from neobatch.common.billing import BILLED_FROM_READY, DEFAULT_INCREMENT, INCREMENTS
from neobatch.common.contracts import ProvisionRunning

BUDGET_EXCEEDED = "budget_exceeded"


def cost_deadline(
    *,
    max_cost_usd: float | None,
    spent_usd: float,
    price_per_hour: float,
    provider: str,
    leased_at: datetime | None,
    running_at: datetime,
    stop_seconds: float,
) -> datetime | None:
    """When to begin stopping the job so its bill stays within `max_cost_usd` (None: never)."""
    if max_cost_usd is None or price_per_hour <= 0:
        return None
    billed_from = running_at if provider in BILLED_FROM_READY or leased_at is None else leased_at
    increment = INCREMENTS.get(provider, DEFAULT_INCREMENT)
    affordable = max(0.0, max_cost_usd - spent_usd) / price_per_hour * 3600
    whole = math.floor(affordable / increment + 1e-9) * increment
    return billed_from + timedelta(seconds=max(0.0, whole - stop_seconds))


def lease_fields(
    max_cost_usd: float | None,
    spent_usd: float,
    event: ProvisionRunning,
    now: datetime,
    stop_seconds: float,
) -> dict[str, Any]:
    """What a capped job records when its machine is ready: the lease and its cost deadline."""
    if max_cost_usd is None:
        return {}
    return {
        "lease_price_per_hour": event.price_per_hour,
        "leased_at": event.leased_at,
        "budget_deadline_at": cost_deadline(
            max_cost_usd=max_cost_usd,
            spent_usd=spent_usd,
            price_per_hour=event.price_per_hour,
            provider=event.provider,
            leased_at=event.leased_at,
            running_at=now,
            stop_seconds=stop_seconds,
        ),
    }


def spent_on(price_per_hour: float, leased_at: datetime | None, now: datetime) -> float:
    """What a machine leased at `leased_at` cost up to `now` (a lost machine, roughly)."""
    if leased_at is None or price_per_hour <= 0:
        return 0.0
    return max(0.0, (now - leased_at).total_seconds()) * price_per_hour / 3600


def earliest(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return min(known) if known else None


def exceeded_message(max_cost_usd: float | None) -> str:
    """The job's error: its own cap, or (no cap) its project's monthly budget."""
    what = (
        f"the job's machines reached its max_cost_usd of ${max_cost_usd:.4f}"
        if max_cost_usd is not None
        else "the project spent its monthly budget and its operator stops running jobs"
    )
    return f"{BUDGET_EXCEEDED}: {what}; finished lines are in the output file, the rest in the error file"
