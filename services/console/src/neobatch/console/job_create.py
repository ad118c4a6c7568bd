"""Rules for accepting a new job: window grammar, endpoint check, the stored document. Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from neobatch.common.batch_input import ValidationReport
from neobatch.common.contracts import JobStatus

# AIBrix grammar: optional <n>d, then <n>h, then <n>min or <n>m, in that order; total > 0.
_WINDOW = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)(?:min|m))?$")
WINDOW_HINT = "use days, hours and minutes in that order, e.g. 24h, 1d2h, 90min"
# Bounded so a deadline computed from it stays a sane datetime (a huge value would overflow).
MAX_WINDOW_SECONDS = 30 * 86400

# What the engine (vLLM or the simulator) serves; a template that lists no endpoints is
# taken to support these.
DEFAULT_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")

# Every timestamp a job document may carry, in lifecycle order.
JOB_TIMESTAMPS = (
    "created_at",
    "queued_at",
    "resource_preparing_at",
    "submitting_at",
    "batch_created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancel_requested_at",
    "cancelling_at",
    "cancelled_at",
    "resource_failed_at",
    "submit_failed_at",
)


def parse_completion_window(value: str) -> int:
    """`"1d2h"` → 93600 seconds; raises ValueError naming the field on anything else."""
    match = _WINDOW.match(value.strip())
    if match is None or not value.strip():
        raise ValueError(f"completion_window {value!r} is invalid: {WINDOW_HINT}")
    days, hours, minutes = (int(match.group(k) or 0) for k in ("d", "h", "m"))
    seconds = days * 86400 + hours * 3600 + minutes * 60
    if seconds <= 0:
        raise ValueError(f"completion_window {value!r} must be longer than zero")
    if seconds > MAX_WINDOW_SECONDS:
        raise ValueError(f"completion_window {value!r} must be at most 30d")
    return seconds


def supports_endpoint(supported: Sequence[str], endpoint: str) -> bool:
    return endpoint in (supported or DEFAULT_ENDPOINTS)


def serving_name(model: dict[str, Any] | None, spec: dict[str, Any]) -> str:
    """What batch requests put in `body.model`: the model's serving name, else the source URI."""
    if model and model.get("serving_name"):
        return str(model["serving_name"])
    return str((spec.get("model_source") or {}).get("uri") or "")


def build_job_doc(
    *,
    job_id: str,
    batch_id: str,
    owner: str,
    project: str,
    request: dict[str, Any],
    template: dict[str, Any],
    model: dict[str, Any] | None,
    report: ValidationReport,
    now: datetime,
) -> dict[str, Any]:
    """The `jobs` document (CONTRACTS.md) for a request and its resolved template.

    An input file whose lines fail validation gives a job that is `failed` from the start,
    with the line-numbered `errors` OpenAI shows; nothing is ever provisioned for it.
    """
    resource = request.get("resource_request") or {}
    doc: dict[str, Any] = {
        "_id": job_id,
        "batch_id": batch_id,
        "status": JobStatus.QUEUED.value,
        "version": 1,
        "name": request.get("name") or "",
        "created_by": owner,
        "project": project,
        "endpoint": request["endpoint"],
        "input_dataset": request["input_dataset"],
        "completion_window": request["completion_window"],
        "completion_window_seconds": parse_completion_window(request["completion_window"]),
        "model_id": template["model_id"],
        "model_template_id": template["_id"],
        "model_template_name": template["name"],
        "model_template_version": template["version"],
        # Inline, so later template edits never change a job already accepted (AIBrix §1.2).
        "template_spec": template["spec"],
        "serving_name": serving_name(model, template["spec"]),
        # 0 or absent means one replica (AIBrix).
        "resource_request": {
            "replicas": resource.get("replicas") or 1,
            "provider_config": resource.get("provider_config"),
        },
        "provider": request.get("provider"),
        "client": request.get("client"),
        "metadata": request.get("metadata") or {},
        "provision_id": None,
        # What the client counted, shown until the validated count below is known.
        "request_count_total": request.get("request_count_total"),
        "request_counts": {"total": report.total, "completed": 0, "failed": 0},
        "output_dataset": None,
        "error_dataset": None,
        "error_code": None,
        "error_message": None,
    }
    doc.update(dict.fromkeys(JOB_TIMESTAMPS))
    doc["created_at"] = now
    if report.ok:
        doc["queued_at"] = now
        return doc
    doc.update(
        status=JobStatus.FAILED.value,
        failed_at=now,
        error_code="empty_file" if report.invalid_lines == 0 else "invalid_input_file",
        error_message=report.summary(),
        errors=[
            {"code": e.code, "message": e.message, "param": e.param, "line": e.line}
            for e in report.errors
        ],
    )
    return doc
