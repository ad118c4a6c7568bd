"""The machines of one job (issue 15: one batch, many machines). Pure: no I/O.

A job asks for `replicas` provisions when it is placed (`prov_<job>_1` .. `prov_<job>_<replicas>`);
a replacement for a lost machine takes the next number. The planner keeps each one's state on
the job (`machines`), so every decision sees which machines are still held:

- `requested`: asked of the resource-manager, not running yet;
- `running`: running and handed to the runtime-agent (its own `batch.requested`);
- `releasing`: release asked (its work ran out, it was lost, the batch ended, or it came up
  when it was no longer needed);
- `released`: the resource-manager confirmed the release;
- `failed`: it never came up (the resource-manager tried every offer it could).

Each machine also keeps what `provision.running` said of its lease (provider, price, when
leased and when ready) and when its bill stopped (`ended_at`: lost, or its release confirmed),
so a job's cost cap counts every machine it ever had (budget.py).

A job stored before this field existed has one machine, `provision_id`, whose state follows
from the job's status (`of_job`): so a replicas=1 job decides exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from neobatch.common.contracts import JobStatus, ProvisionRunning
from neobatch.planner import policy

if TYPE_CHECKING:
    from neobatch.planner.decisions import Job

REQUESTED = "requested"
RUNNING = "running"
RELEASING = "releasing"
RELEASED = "released"
FAILED = "failed"
# States in which the job holds (or is being given) the machine.
HELD = frozenset({REQUESTED, RUNNING})


class Machine(msgspec.Struct, frozen=True):
    provision_id: str
    state: str
    # From its `provision.running` (the bill's start and price, `common.billing`).
    provider: str = ""
    price_per_hour: float = 0.0
    leased_at: datetime | None = None
    running_at: datetime | None = None
    # When its bill stopped: lost, or its release confirmed (None: still billed).
    ended_at: datetime | None = None


def of_job(job: Job) -> list[Machine]:
    """The job's machines. The provision the job names is always one of them: a job stored
    before `machines` existed (or moved to a new machine by a planner that predates it, during
    a rolling upgrade) has it alone, in the state its status implies."""
    machines = list(job.machines)
    if job.provision_id is None or find(machines, job.provision_id) is not None:
        return machines
    if job.status.is_terminal:
        state = RELEASING  # released when it ended
    elif job.status is JobStatus.RESOURCE_PREPARING:
        state = REQUESTED
    elif job.status is JobStatus.CANCELLING:
        state = RUNNING if job.batch_handed_over else REQUESTED
    else:
        state = RUNNING
    return [*machines, Machine(job.provision_id, state)]


def find(machines: Iterable[Machine], provision_id: str) -> Machine | None:
    return next((m for m in machines if m.provision_id == provision_id), None)


def with_state(machines: Iterable[Machine], ids: Iterable[str], state: str) -> list[Machine]:
    """`machines` with those of `ids` in `state`."""
    chosen = set(ids)
    return [
        msgspec.structs.replace(m, state=state) if m.provision_id in chosen else m for m in machines
    ]


def came_up(
    machines: Iterable[Machine], event: ProvisionRunning, now: datetime, state: str
) -> list[Machine]:
    """`machines` with the one `event` names up, in `state`, its lease recorded."""
    return [
        msgspec.structs.replace(
            m,
            state=state,
            provider=event.provider,
            price_per_hour=event.price_per_hour,
            leased_at=event.leased_at,
            running_at=now,
        )
        if m.provision_id == event.provision_id
        else m
        for m in machines
    ]


def ended(machines: Iterable[Machine], ids: Iterable[str], now: datetime) -> list[Machine]:
    """`machines` with the bill of those of `ids` that ran stopped at `now` (once)."""
    chosen = set(ids)
    return [
        msgspec.structs.replace(m, ended_at=now)
        if m.provision_id in chosen and m.running_at is not None and m.ended_at is None
        else m
        for m in machines
    ]


def ids_in(machines: Iterable[Machine], states: Iterable[str]) -> list[str]:
    wanted = frozenset(states)
    return [m.provision_id for m in machines if m.state in wanted]


def tried(machines: Iterable[Machine]) -> int:
    """How many provisions the job has asked for so far (ids are numbered from 1)."""
    return max((policy.provision_attempt(m.provision_id) for m in machines), default=0)


def replacements_allowed(replicas: int, max_provision_attempts: int) -> int:
    """Replacements for lost machines one job may ask for: at most `replicas` and at most
    `max_provision_attempts - 1` (so a one-machine job tries as many machines as before)."""
    return max(0, min(max(1, replicas), max_provision_attempts - 1))


def machines_allowed(replicas: int, max_provision_attempts: int) -> int:
    """Machines one job may lease in all: those it asked for and their bounded replacements."""
    return max(1, replicas) + replacements_allowed(replicas, max_provision_attempts)
