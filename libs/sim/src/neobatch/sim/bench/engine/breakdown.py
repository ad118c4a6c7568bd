"""Where a whole job's time goes (bench (b)): the steps from upload to completed, read from the
stack's service logs (their JSON lines carry `at`), each as seconds since the upload began.

upload -> job created -> machine leased (planner: `submitting`, "machine ready") -> agent claims
the batch -> engine launched over SSH -> tunnel up -> engine healthy -> first request -> last
answer ("dispatch ended") -> output files written (planner: `finalizing` -> engine stopped) ->
completed.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

# (step, service log, message, field that must match or None)
_STEPS: tuple[tuple[str, str, str, tuple[str, str] | None], ...] = (
    ("provisioning started", "planner", "job transition", ("new", "resource_preparing")),
    ("machine leased", "planner", "job transition", ("new", "submitting")),
    ("batch claimed by the agent", "runtime-agent", "batch claimed", None),
    ("engine launched (SSH)", "runtime-agent", "engine launched", None),
    ("tunnel up", "runtime-agent", "ssh tunnel ready", None),
    ("engine healthy", "runtime-agent", "engine ready", None),
    ("dispatch order planned", "runtime-agent", "dispatch order planned", None),
    ("last answer stored", "runtime-agent", "dispatch ended", None),
    ("output files written", "planner", "job transition", ("new", "finalizing")),
    ("engine stopped", "runtime-agent", "engine stopped", None),
    ("batch ended", "runtime-agent", "batch ended", None),
    ("job completed", "planner", "job transition", ("new", "completed")),
)


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.split("\n"):
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def job_steps(log_dir: Path, upload_started: float) -> list[tuple[str, float]]:
    """(step, seconds since `upload_started` (a time.time())) for each step found, in time
    order; the dispatch's start is its end minus its `seconds`."""
    logs = {name: _records(log_dir / f"{name}.log") for name in ("planner", "runtime-agent")}
    steps: list[tuple[str, float]] = []
    for step, service, message, match in _STEPS:
        for record in logs[service]:
            if record.get("message") != message:
                continue
            if match is not None and record.get(match[0]) != match[1]:
                continue
            at = datetime.fromisoformat(record["at"]).timestamp() - upload_started
            if message == "dispatch ended" and isinstance(record.get("seconds"), int | float):
                began = at - float(record["seconds"])
                steps.append(("dispatch began (order planned, then the first request)", began))
            steps.append((step, at))
            break
    return sorted(steps, key=lambda step: step[1])


def print_steps(steps: list[tuple[str, float]], job_seconds: float) -> None:
    print("    whole job, step by step (s since the upload began; + the step's own share):")
    last = 0.0
    for step, at in steps:
        print(f"      {at:7.1f}  +{at - last:6.1f}  {step}")
        last = at
    print(f"      {job_seconds:7.1f}  +{job_seconds - last:6.1f}  the console says completed")
