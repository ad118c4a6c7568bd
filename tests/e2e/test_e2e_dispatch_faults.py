"""End to end: an engine that answers 500, 429 with `Retry-After`, or hangs past the request
timeout, on the local stack (every service its own process, the engine simulator launched
over SSH from the template's command).

The job's `client` block sets a 1 s request timeout and the retry policy. With a retry budget
every request ends with exactly one line across output and error files; with no retries the
error file holds exactly the requests whose first attempt the simulator failed, each with its
status code (or a timeout error), predicted from the simulator's seeded per-attempt dice.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient, batch_lines, sim_engine_template
from neobatch.sim.engine.app import attempt_draw

REQUESTS = 300
SEED = 11
HANG, THROTTLE, FAIL = 0.03, 0.05, 0.05  # rates per attempt: hang, 429, 500
FAULTS = {
    "failure_mode": "attempt",
    "failure_rate": FAIL,
    "status_429_rate": THROTTLE,
    "retry_after_seconds": 0.3,
    "hang_rate": HANG,
    "hang_seconds": 2.5,
    "seed": SEED,
    "latency_ms": 5,
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = Ports.free()
    pool = ",".join(f"u{i}@127.0.0.1:{ports.ssh}" for i in range(2))
    env = {"NEOBATCH_DB": "dispatch_faults", "NEOBATCH_SSH_POOL": pool}
    with start_stack(tmp_path_factory.mktemp("stack"), ports, env) as started:
        yield started


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _first_attempt(batch_id: str, index: int) -> str:
    draw = attempt_draw(SEED, f"{batch_id}-{index}", 1)
    if draw < HANG:
        return "timeout"
    if draw < HANG + THROTTLE:
        return "429"
    if draw < HANG + THROTTLE + FAIL:
        return "500"
    return "ok"


def test_faults_are_retried_as_configured_and_permanent_ones_land_in_the_error_file(
    stack: Stack, tmp_path: Path
) -> None:
    console = ConsoleClient.for_stack(stack)
    model_id = console.ensure_model()
    lines = batch_lines(REQUESTS)
    file_id = console.upload(lines)
    expected = sorted(line["custom_id"] for line in lines)
    logs = {name: tmp_path / f"{name}.jsonl" for name in ("retried", "once")}
    retry = {"base_delay_seconds": 0.05, "max_delay_seconds": 0.2}
    jobs = {}
    for name, max_retries in (("retried", 6), ("once", 0)):
        template = sim_engine_template(
            f"faults-{name}", model_id, request_log=str(logs[name]), **FAULTS
        )
        console.create_template(model_id, template)
        client = {
            "request_timeout_seconds": 1,
            "max_concurrency": 32,
            "retry_policy": {**retry, "max_retries": max_retries},
        }
        jobs[name] = console.create_job(file_id, model_id, f"faults-{name}", client=client)["id"]

    ended = {name: console.wait_settled(job_id, 50) for name, job_id in jobs.items()}
    for name, job in ended.items():
        assert job["status"] == "completed", (name, job.get("error_message"))

    # With retries: every custom_id exactly once across the two files, nearly all succeeded.
    job = ended["retried"]
    output = console.file_lines(job["output_dataset"])
    errors = console.file_lines(job["error_dataset"])
    assert sorted(x["custom_id"] for x in output + errors) == expected
    assert len(output) >= REQUESTS - 2, errors
    answered = Counter(x["status"] for x in _log(logs["retried"]))
    hung = sum(1 for x in _log(logs["retried"]) if not x["delivered"])
    print(f"\nretried: engine answers by status {dict(answered)}, hangs timed out: {hung}")
    assert answered[429] > 0 and answered[500] > 0
    assert answered[200] >= len(output)

    # Without retries: the error file is exactly the requests whose one attempt failed.
    job = ended["once"]
    batch_id = job["batch_id"]
    output = console.file_lines(job["output_dataset"])
    errors = console.file_lines(job["error_dataset"])
    assert sorted(x["custom_id"] for x in output + errors) == expected
    predicted = {lines[i]["custom_id"]: _first_attempt(batch_id, i) for i in range(REQUESTS)}
    failed = {k: v for k, v in predicted.items() if v != "ok"}
    assert {x["custom_id"] for x in errors} == set(failed)
    kinds = Counter(failed.values())
    print(f"once: {len(errors)} permanent failures {dict(kinds)}")
    assert kinds["timeout"] > 0 and kinds["429"] > 0 and kinds["500"] > 0
    for line in errors:
        kind = failed[line["custom_id"]]
        if kind == "timeout":
            assert line["response"] is None
            assert line["error"]["code"] == "request_timeout", line
        else:
            assert line["error"] is None
            assert line["response"]["status_code"] == int(kind), line
            assert line["response"]["body"]["error"]["code"] == int(kind)
    assert job["request_counts"] == {
        "total": REQUESTS,
        "completed": REQUESTS - len(failed),
        "failed": len(failed),
    }
    console.close()
