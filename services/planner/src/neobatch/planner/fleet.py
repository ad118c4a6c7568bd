"""The job's machines (issue 15): what each provision's news and each machine's end mean for
the job. Pure; called by `jobs.decide`. A one-machine job decides exactly as before.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from neobatch.common.contracts import (
    BatchMachineDone,
    BatchMachineRemoved,
    BatchMachineWanted,
    BatchRequested,
    Event,
    JobStatus,
    ProvisionFailed,
    ProvisionLost,
    ProvisionReleased,
    ProvisionRunning,
)
from neobatch.planner import budget, policy
from neobatch.planner import machines as m
from neobatch.planner.decisions import (
    BATCH_HANDED_OVER,
    Decision,
    Job,
    end_with_error,
    move,
    provision_request,
    release_ids,
)
from neobatch.planner.machines import Machine
from neobatch.planner.policy import Limits


def batch_request(job: Job, event: ProvisionRunning, now: datetime) -> BatchRequested:
    return BatchRequested(
        # One per (batch, machine): a replayed decision cannot add a machine twice.
        event_id=f"evt_batch_{job.batch_id.removeprefix('batch_')}_{event.provision_id}",
        batch_id=job.batch_id,
        job_id=job.id,
        provision_id=event.provision_id,
        input_file_id=job.input_dataset,
        endpoint=job.endpoint,
        owner=job.created_by,
        target=event.endpoint,
        engine=policy.engine_spec(job.template_spec, job.serving_name),
        # The completion window counts from when the batch is accepted, as AIBrix does; a
        # batch moved to a replacement machine, or joined by another, keeps its window.
        expires_at=job.expires_at or now + timedelta(seconds=job.completion_window_seconds),
        runtime=event.provider,
        client=policy.client_spec(job.client, job.template_spec),
        replicas=max(1, job.replicas),
        occurred_at=now,
    )


def on_provision_running(job: Job, event: ProvisionRunning, now: datetime) -> Decision | None:
    machines = m.of_job(job)
    machine = m.find(machines, event.provision_id)
    if machine is None or machine.state != m.REQUESTED or job.status.is_terminal:
        return None
    pid = event.provision_id
    if job.status is JobStatus.RESOURCE_PREPARING:
        # The first machine up (or the first replacement when none was left) starts the batch.
        batch = batch_request(job, event, now)
        return move(
            job,
            JobStatus.SUBMITTING,
            now,
            f"machine ready ({event.provider})",
            fields={
                "batch_handed_over": True,
                "expires_at": batch.expires_at,
                "machines": m.came_up(machines, event, now, m.RUNNING),
            },
            events=[batch],
        )
    joining = job.status in BATCH_HANDED_OVER and job.status is not JobStatus.FINALIZING
    if joining and not job.work_exhausted:
        return Decision(
            fields={"machines": m.came_up(machines, event, now, m.RUNNING)},
            events=[batch_request(job, event, now)],
            reason=f"machine {pid} joins the batch ({event.provider})",
        )
    # Up after its work ran out (or while the job is cancelling): nothing to run, free it.
    return Decision(
        fields={"machines": m.came_up(machines, event, now, m.RELEASING)},
        events=release_ids(job, [pid], now, "no work left for the machine"),
        reason=f"machine {pid} came up with no work left for it",
    )


def on_provision_failed(job: Job, event: ProvisionFailed, now: datetime) -> Decision | None:
    machines = m.of_job(job)
    machine = m.find(machines, event.provision_id)
    if machine is None or machine.state not in m.HELD or job.status.is_terminal:
        return None
    machines = m.with_state(machines, [event.provision_id], m.FAILED)
    release = release_ids(job, [event.provision_id], now, "provisioning failed")
    held = m.ids_in(machines, m.HELD)
    if job.status is JobStatus.CANCELLING:
        return _while_cancelling(job, machines, release, now, "machine failed")
    needs_machine = job.status is JobStatus.RESOURCE_PREPARING or (
        job.status in BATCH_HANDED_OVER
        and job.status is not JobStatus.FINALIZING
        and not job.work_exhausted
    )
    if held or not needs_machine:
        # A machine that never comes up does not hold the batch back: the others run it.
        return Decision(
            fields={"machines": machines},
            events=release,
            reason=f"machine {event.provision_id} could not be had ({event.code})",
        )
    message = f"{event.code}: {event.reason}"
    # No machine of the job could be had. A replacement for a lost machine that cannot be had
    # also stops the batch the agent still holds (its partial files are attached when it
    # ends, see `_late_batch_files`).
    return end_with_error(
        job,
        JobStatus.RESOURCE_FAILED,
        now,
        event.code,
        message,
        "provisioning failed",
        machines=machines,
        also_release=release,
    )


def on_provision_released(job: Job, event: ProvisionReleased, now: datetime) -> Decision | None:
    machines = m.of_job(job)
    if m.find(machines, event.provision_id) is None:
        return None
    ids = [event.provision_id]
    machines = m.ended(m.with_state(machines, ids, m.RELEASED), ids, now)
    fields = {"provision_released_at": now, "machines": machines}
    # A cancel before the batch started ends when every release asked for is confirmed.
    pending = m.ids_in(machines, [*m.HELD, m.RELEASING])
    if job.status is JobStatus.CANCELLING and not job.batch_handed_over and not pending:
        return move(job, JobStatus.CANCELLED, now, "cancelled; machine released", fields=fields)
    return Decision(fields=fields, reason="machine released")


def on_machine_done(job: Job, event: BatchMachineDone, now: datetime) -> Decision | None:
    """The agent will run nothing more on this machine: release it now (its lines stay). With
    no work left to run or steal, machines still coming up are released too and none joins."""
    machines = m.of_job(job)
    machine = m.find(machines, event.provision_id)
    if event.batch_id != job.batch_id or machine is None or machine.state not in m.HELD:
        return None
    ids = [event.provision_id]
    fields: dict[str, Any] = {
        f"machine_lines.{event.provision_id}": event.lines_completed + event.lines_failed
    }
    if event.reason in ("no_work_left", "batch_ended"):
        fields["work_exhausted"] = True
        ids += [pid for pid in m.ids_in(machines, [m.REQUESTED]) if pid not in ids]
    fields["machines"] = m.with_state(machines, ids, m.RELEASING)
    return Decision(
        fields=fields,
        events=release_ids(job, ids, now, f"machine done: {event.reason}"),
        reason=f"machine {event.provision_id} done ({event.reason})",
    )


def on_provision_lost(
    job: Job, event: ProvisionLost, now: datetime, limits: Limits
) -> Decision | None:
    """A machine vanished. Its work goes to the job's other machines (the agent is told at
    once), and a replacement is leased while work remains, a bounded number of times; a job
    left with no machine moves back to provisioning, as a one-machine job always did."""
    machines = m.of_job(job)
    lost = m.find(machines, event.provision_id)
    if lost is None or lost.state not in m.HELD or job.status.is_terminal:
        return None
    pid = event.provision_id
    # A vanished machine's bill stops now (budget.py counts it up to here).
    machines = m.ended(m.with_state(machines, [pid], m.RELEASING), [pid], now)
    events: list[Event] = []
    if job.replicas > 1 and lost.state == m.RUNNING and job.batch_handed_over:
        events.append(
            BatchMachineRemoved(
                batch_id=job.batch_id,
                job_id=job.id,
                provision_id=pid,
                reason=f"machine lost: {event.reason}",
                occurred_at=now,
            )
        )
    events.extend(release_ids(job, [pid], now, "machine lost"))
    others = m.ids_in(machines, m.HELD)
    if job.status is JobStatus.CANCELLING:
        return _while_cancelling(job, machines, events, now, "machine lost")
    if job.budget_stop_requested and not others:
        # Stopping at the job's cost cap: no replacement; its files are attached when it ends.
        return budget.ended_over_budget(job, now, machines=machines, also_release=events)
    tried = m.tried(machines)
    at_most = m.machines_allowed(job.replicas, limits.max_provision_attempts)
    may_replace = tried < at_most
    if others:
        # The others run the lost machine's work; a replacement while some is left to take.
        if may_replace and not job.work_exhausted and job.status is not JobStatus.FINALIZING:
            new = policy.provision_id_for(job.id, tried + 1)
            machines = [*machines, Machine(new, m.REQUESTED)]
            events.append(provision_request(job, new, now, limits))
        return Decision(
            fields={"machines": machines},
            events=events,
            reason=f"machine {pid} lost ({event.reason})",
        )
    if not may_replace:
        shown = "1 machine was" if tried == 1 else f"{tried} machines were"
        message = (
            f"machine_lost: provision {pid} was lost ({event.reason}); "
            f"{shown} tried (at most {at_most})"
        )
        return end_with_error(
            job,
            JobStatus.FAILED,
            now,
            "machine_lost",
            message,
            "machine lost",
            machines=machines,
            also_release=events,
        )
    attempt = tried + 1
    new = policy.provision_id_for(job.id, attempt)
    decision = move(
        job,
        JobStatus.RESOURCE_PREPARING,
        now,
        f"machine lost ({event.reason}); provisioning attempt {attempt}",
        fields={"provision_id": new, "machines": [*machines, Machine(new, m.REQUESTED)]},
        events=[*events, provision_request(job, new, now, limits)],
    )
    # A replacement does not queue for a provisioning slot: the job was admitted long ago, and
    # with every slot taken its batch would stall (and the lost event be spent) until its window
    # ran out. MAX_CONCURRENT_PROVISIONING bounds how many *new* jobs provision at once.
    decision.acquire_slot = False
    return decision


def on_machine_wanted(
    job: Job, event: BatchMachineWanted, now: datetime, limits: Limits
) -> Decision | None:
    """The agent has lines left and no machine running them (every machine ended before a
    chunk came back to be run): lease one more, within the job's replacement bound; past it,
    the job fails rather than wait for a machine forever. Ignored while one is held or coming
    up (a repeated request), and once the job stops, finalizes or hit its cost cap."""
    machines = m.of_job(job)
    stopping = job.status is JobStatus.CANCELLING or job.budget_stop_requested
    handed_over = job.status in BATCH_HANDED_OVER and job.status is not JobStatus.FINALIZING
    if event.batch_id != job.batch_id or stopping or not handed_over:
        return None
    if m.ids_in(machines, m.HELD):
        return None
    tried = m.tried(machines)
    at_most = m.machines_allowed(job.replicas, limits.max_provision_attempts)
    if tried >= at_most:
        message = (
            f"no_machine_left: {event.lines_left} lines were left with no machine to run them; "
            f"{tried} machines were tried (at most {at_most})"
        )
        return end_with_error(
            job, JobStatus.FAILED, now, "no_machine_left", message, "no machine left"
        )
    new = policy.provision_id_for(job.id, tried + 1)
    return Decision(
        fields={"machines": [*machines, Machine(new, m.REQUESTED)], "work_exhausted": False},
        events=[provision_request(job, new, now, limits)],
        reason=f"{event.lines_left} lines left and no machine: leasing {new}",
    )


def _while_cancelling(
    job: Job, machines: list[Machine], events: list[Event], now: datetime, what: str
) -> Decision:
    """A machine ended while the job is cancelling: the cancel ends with the last one held
    (the batch's cancel, if it was handed over, is already on its way to the agent)."""
    if m.ids_in(machines, m.HELD):
        return Decision(fields={"machines": machines}, events=events, reason=what)
    return move(
        job,
        JobStatus.CANCELLED,
        now,
        f"cancelled; {what}",
        fields={"machines": machines},
        events=events,
    )
