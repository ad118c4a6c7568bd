"""A job document as the planner reads and writes it: the fields `decide` needs, and the job
as `save_decision` leaves it (the scheduler keeps that copy to save the read after its own
write). Pure: the mapping only; JobStore does the MongoDB work.
"""

from __future__ import annotations

from typing import Any

import msgspec

from neobatch.common.contracts import JobStatus
from neobatch.planner.decisions import Decision, Job
from neobatch.planner.machines import Machine

# Only what `job_from_doc` reads: a job document also carries metadata, counts, errors...
JOB_FIELDS = {
    field: 1
    for field in (
        "status",
        "version",
        "batch_id",
        "provision_id",
        "batch_handed_over",
        "cancel_requested_at",
        "template_spec",
        "serving_name",
        "endpoint",
        "input_dataset",
        "created_by",
        "resource_request",
        "provider",
        "client",
        "completion_window_seconds",
        "expires_at",
        "project",
        "created_at",
        "model_template_id",
        "request_counts",
        "machines",
        "work_exhausted",
        "max_cost_usd",
        "budget_deadline_at",
        "budget_stop_requested_at",
    )
}


def job_from_doc(doc: dict[str, Any]) -> Job:
    return Job(
        id=doc["_id"],
        status=JobStatus(doc["status"]),
        version=doc.get("version", 0),
        batch_id=doc["batch_id"],
        provision_id=doc.get("provision_id"),
        batch_handed_over=bool(doc.get("batch_handed_over")),
        cancel_requested=doc.get("cancel_requested_at") is not None,
        template_spec=doc.get("template_spec") or {},
        serving_name=doc.get("serving_name") or "",
        endpoint=doc.get("endpoint") or "",
        input_dataset=doc.get("input_dataset") or "",
        created_by=doc.get("created_by") or "",
        replicas=int((doc.get("resource_request") or {}).get("replicas") or 1),
        provider=doc.get("provider") or None,
        client=doc.get("client") or None,
        completion_window_seconds=float(doc.get("completion_window_seconds") or 24 * 3600),
        expires_at=doc.get("expires_at"),
        project=doc.get("project") or "",
        created_at=doc.get("created_at"),
        template_id=str(doc.get("model_template_id") or ""),
        request_count=int((doc.get("request_counts") or {}).get("total") or 0),
        machines=msgspec.convert(doc.get("machines") or [], list[Machine]),
        work_exhausted=bool(doc.get("work_exhausted")),
        max_cost_usd=doc.get("max_cost_usd"),
        budget_deadline_at=doc.get("budget_deadline_at"),
        budget_stop_requested=doc.get("budget_stop_requested_at") is not None,
    )


# The fields of a Job a decision may set, stored on the job under the same names.
_WRITTEN = (
    "provision_id",
    "batch_handed_over",
    "expires_at",
    "machines",
    "work_exhausted",
    "budget_deadline_at",
)


def written_job(job: Job, decision: Decision) -> Job:
    """`job` as `save_decision` leaves it: what `job_from_doc` would read back."""
    changes: dict[str, Any] = {"version": job.version + 1}
    if decision.status is not None:
        changes["status"] = decision.status
    for field in _WRITTEN:
        if field in decision.fields:
            changes[field] = decision.fields[field]
    if "budget_stop_requested_at" in decision.fields:
        changes["budget_stop_requested"] = True
    return msgspec.structs.replace(job, **changes)
