"""The machines of a batch spread over several (issue 15): documents and events. Pure: no I/O.

A batch asked for with `replicas` > 1 gets one `batch_machines` document per machine (one per
`batch.requested`, keyed by its provision id). A machine is

    waiting ──► ready ──► done      (no work left for it, or the batch ended: `batch.machine_done`)
       │          └─────► removed   (`batch.machine_removed`: the planner lost or released it)
       └──► done | removed

`ready` machines are claimed by agents' machine runs under a lease (`lease_owner`); the run
that holds a machine owns its engine. `waiting` machines wait for the batch to be validated.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from neobatch.common.contracts import (
    BatchMachineDone,
    BatchRequested,
    BatchStatus,
    BatchStatusReported,
    ClientSpec,
    EngineSpec,
    RequestCounts,
    SshEndpoint,
)

WAITING, READY, DONE, REMOVED = "waiting", "ready", "done", "removed"
ACTIVE = (WAITING, READY)
# `batch.machine_done` reasons (CONTRACT15).
NO_WORK_LEFT = "no_work_left"
BATCH_ENDED = "batch_ended"
ENGINE_FAILED = "engine_failed"
MACHINE_UNREACHABLE = "machine_unreachable"


class Machine(msgspec.Struct, kw_only=True):
    """A `batch_machines` document."""

    id: str = msgspec.field(name="_id")
    batch_id: str
    job_id: str
    provision_id: str
    target: SshEndpoint
    engine: EngineSpec
    runtime: str = "ssh"
    client: ClientSpec = ClientSpec()
    host_public_key: str | None = None
    status: str = WAITING
    reason: str = ""
    error_code: str = ""
    error_message: str = ""
    lines_completed: int = 0
    lines_failed: int = 0
    dispatch_started_at: datetime | None = None
    dispatch_ended_at: datetime | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    created_at: datetime | None = None
    version: int = 0

    @property
    def launch_key(self) -> str:
        """Names the engine's work directory (and container) on the machine: one per machine
        of the batch, so machines sharing a host (the simulators) never share one."""
        return f"{self.batch_id}.{self.provision_id}"


def machine_id(batch_id: str, provision_id: str) -> str:
    return f"{batch_id}:{provision_id}"


def machine_from_doc(doc: dict[str, Any]) -> Machine:
    return msgspec.convert(doc, Machine)


def machine_doc_from_event(event: BatchRequested, now: datetime, status: str) -> dict[str, Any]:
    return {
        "_id": machine_id(event.batch_id, event.provision_id),
        "batch_id": event.batch_id,
        "job_id": event.job_id,
        "provision_id": event.provision_id,
        "target": msgspec.to_builtins(event.target),
        "engine": msgspec.to_builtins(event.engine),
        "runtime": event.runtime,
        "client": msgspec.to_builtins(event.client),
        "host_public_key": event.target.host_public_key,
        "status": status,
        "reason": "",
        "lines_completed": 0,
        "lines_failed": 0,
        "lease_owner": None,
        "lease_until": None,
        "created_at": now,
        "version": 0,
    }


def status_for_new_machine(batch_status: BatchStatus) -> str:
    """A machine added to a live batch: ready once the batch runs, else it waits."""
    return READY if batch_status is BatchStatus.IN_PROGRESS else WAITING


def machine_done(machine: Machine, reason: str) -> BatchMachineDone:
    """Nothing more runs on this machine for the batch: the planner releases it."""
    return BatchMachineDone(
        batch_id=machine.batch_id,
        job_id=machine.job_id,
        provision_id=machine.provision_id,
        reason=reason,
        lines_completed=machine.lines_completed,
        lines_failed=machine.lines_failed,
    )


def lines_by_machine(machines: list[Machine]) -> dict[str, int]:
    return {m.provision_id: m.lines_completed + m.lines_failed for m in machines}


def spread_progress(
    batch_id: str, job_id: str, counts: RequestCounts, machines: list[Machine]
) -> BatchStatusReported:
    """`batch.status` of a running spread batch: whole-batch counts and each machine's lines."""
    return BatchStatusReported(
        batch_id=batch_id,
        job_id=job_id,
        status=BatchStatus.IN_PROGRESS,
        request_counts=counts,
        lines_by_machine=lines_by_machine(machines),
    )


def dispatch_window(machines: list[Machine]) -> tuple[datetime | None, datetime | None]:
    """The first dispatch start and the last dispatch end over the batch's machines."""
    starts = [m.dispatch_started_at for m in machines if m.dispatch_started_at is not None]
    ends = [m.dispatch_ended_at for m in machines if m.dispatch_ended_at is not None]
    return (min(starts) if starts else None, max(ends) if ends else None)


def failed_machine(machines: list[Machine]) -> Machine | None:
    """When no machine is active any more and one failed to run its engine: that one (the
    batch cannot go on without a machine); None while any is active or none failed so."""
    if any(m.status in ACTIVE for m in machines):
        return None
    failed = [m for m in machines if m.reason == ENGINE_FAILED]
    return failed[-1] if failed else None


def no_machine_left(machines: list[Machine]) -> bool:
    """The batch had machines and every one has ended. With an open chunk, that is work with
    nobody to run it: machines end when they find nothing to claim or steal, and a chunk still
    held by a machine that then stopped without finishing it (lost while an agent crash held
    its documents, or unreachable) comes back after the others looked."""
    return bool(machines) and not any(m.status in ACTIVE for m in machines)
