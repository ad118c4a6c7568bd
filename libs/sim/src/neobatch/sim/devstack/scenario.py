"""Drive a running stack through its public API: the steps e2e tests, chaos runs and
benchmarks repeat (template with a simulated engine, upload, job, wait, read output).

Everything goes through the console's HTTP API, as a user's script would.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from neobatch.sim.devstack.sample_batch import sample_request
from neobatch.sim.testing.servers import free_port

TERMINAL = frozenset(
    {"completed", "failed", "expired", "cancelled", "resource_failed", "submit_failed"}
)
MODEL_NAME = "Sim Chat 1B"
MODEL = "sim-chat-1b"  # its serving name: what batch lines ask for and the engine answers as
ENDPOINT = "/v1/chat/completions"


def model_id_for(name: str) -> str:
    """The id the console gives a model: ``model-<slug of name>``."""
    return "model-" + "-".join(name.lower().split())


def engine_command(latency_ms: float = 5) -> list[str]:
    """The engine simulator's launch command in a template (the agent fills {port} and {model}).

    The SSH host runs on this machine, so the interpreter running this (the project venv) is the
    one that has the engine simulator.
    """
    return [
        sys.executable, "-m", "neobatch.sim.engine", "--host", "127.0.0.1", "--port", "{port}",
        "--model", "{model}", "--latency-ms", str(latency_ms),
    ]  # fmt: skip


def sim_engine_template(
    name: str,
    model_id: str,
    *,
    latency_ms: float = 5,
    startup_delay_seconds: float = 0,
    failure_rate: float = 0.0,
    accelerator_type: str = "H100",
    engine_port: int | None = None,
    ready_timeout_seconds: float = 60,
    failure_mode: str | None = None,
    status_429_rate: float | None = None,
    retry_after_seconds: float | None = None,
    hang_rate: float | None = None,
    hang_seconds: float | None = None,
    request_log: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """A deployment template (AIBrix shape) whose engine is the simulator, on its own port.

    The fault options map to the simulator's flags of the same name (`--failure-mode attempt`
    makes `failure_rate` transient; see `python -m neobatch.sim.engine --help`).
    """
    command = [
        *engine_command(latency_ms),
        "--startup-delay-seconds", str(startup_delay_seconds), "--failure-rate", str(failure_rate),
    ]  # fmt: skip
    faults = {
        "--failure-mode": failure_mode,
        "--status-429-rate": status_429_rate,
        "--retry-after-seconds": retry_after_seconds,
        "--hang-rate": hang_rate,
        "--hang-seconds": hang_seconds,
        "--request-log": request_log,
        "--seed": seed,
    }
    for flag, value in faults.items():
        if value is not None:
            command += [flag, str(value)]
    return {
        "name": name,
        "version": "v1.0.0",
        "spec": {
            "engine": {
                "type": "vllm",
                "command": command,
                "port": engine_port or free_port(),
                "health_endpoint": "/health",
                "ready_timeout_seconds": ready_timeout_seconds,
            },
            "model_source": {"type": "local", "uri": MODEL},
            "accelerator": {"type": accelerator_type, "count": 1},
            "supported_endpoints": [ENDPOINT],
        },
    }


def batch_lines(n: int, model: str = MODEL) -> list[dict[str, Any]]:
    return [sample_request(i, model) for i in range(1, n + 1)]


class ConsoleClient:
    """A project key for files and jobs; the operator key, when given, for models and templates."""

    def __init__(
        self,
        console_url: str,
        api_key: str,
        timeout_seconds: float = 30,
        *,
        operator_key: str = "",
    ) -> None:
        self.http = httpx.Client(
            base_url=console_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_seconds,
        )
        self.operator = {"Authorization": f"Bearer {operator_key or api_key}"}

    @classmethod
    def for_stack(cls, stack: Any, timeout_seconds: float = 30) -> ConsoleClient:
        """A client for a started `devstack.Stack`, with both of its keys."""
        return cls(
            stack.console_url, stack.api_key, timeout_seconds, operator_key=stack.operator_key
        )

    def close(self) -> None:
        self.http.close()

    def _ok(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise AssertionError(
                f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
            )
        return response.json()

    def ensure_model(self, name: str = MODEL_NAME) -> str:
        response = self.http.post(
            "/api/v1/models",
            json={"name": name, "categories": ["LLM"], "serving_name": MODEL},
            headers=self.operator,
        )
        if response.status_code == 409:
            return model_id_for(name)
        return str(self._ok(response)["id"])

    def create_template(self, model_id: str, template: dict[str, Any]) -> dict[str, Any]:
        return self._ok(
            self.http.post(
                f"/api/v1/models/{model_id}/deployment-templates",
                json=template,
                headers=self.operator,
            )
        )

    def upload(self, lines: Iterable[dict[str, Any]], filename: str = "batch.jsonl") -> str:
        content = "".join(json.dumps(line) + "\n" for line in lines).encode()
        files = {"file": (filename, io.BytesIO(content), "application/jsonl")}
        return str(
            self._ok(
                self.http.post("/api/v1/files/upload", data={"purpose": "batch"}, files=files)
            )["id"]
        )

    def create_job(
        self, file_id: str, model_id: str, template_name: str, **extra: Any
    ) -> dict[str, Any]:
        body = {
            "input_dataset": file_id,
            "endpoint": ENDPOINT,
            "model_id": model_id,
            "model_template_name": template_name,
            **extra,
        }
        return self._ok(self.http.post("/api/v1/jobs", json=body))

    def sim_job(
        self,
        model_id: str,
        name: str,
        requests: int,
        *,
        edit_template: Callable[[dict[str, Any]], None] | None = None,
        job_fields: dict[str, Any] | None = None,
        **engine: Any,
    ) -> dict[str, Any]:
        """A template `name` whose engine is the simulator (`engine`: sim_engine_template's
        options, `edit_template` changes it further), `requests` sample lines, and a job on them.
        """
        template = sim_engine_template(name, model_id, **engine)
        if edit_template is not None:
            edit_template(template)
        self.create_template(model_id, template)
        file_id = self.upload(batch_lines(requests))
        return self.create_job(file_id, model_id, name, **(job_fields or {}))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"/api/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._ok(self.http.post(f"/api/v1/jobs/{job_id}/cancel", json={}))

    def wait_job(
        self,
        job_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout_seconds: float,
        what: str = "",
    ) -> dict[str, Any]:
        """Poll the job until `predicate` holds; raise with the last view on timeout."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                job = self.job(job_id)
            except httpx.TransportError:
                job = {}  # console restarting (chaos tests): try again until the deadline
            if job and predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id}: timed out waiting for {what or predicate}: {job}"
                )
            time.sleep(0.1)

    def wait_settled(self, job_id: str, timeout_seconds: float) -> dict[str, Any]:
        """Terminal, and its machine (if it ever had one) confirmed released."""

        def settled(job: dict[str, Any]) -> bool:
            provision = job.get("provision") or {}
            return job["status"] in TERMINAL and provision.get("status") in (None, "released")

        return self.wait_job(job_id, settled, timeout_seconds, "terminal with machine released")

    def file_lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        response = self.http.get(f"/api/v1/files/{file_id}/content")
        if response.status_code == 404:
            return []
        self._ok_status(response)
        # JSONL lines end at "\n" only: a generated text may hold U+2028 or \x85, which
        # splitlines() would also break at.
        return [json.loads(line) for line in response.text.split("\n") if line.strip()]

    def _ok_status(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            raise AssertionError(f"{response.request.url}: {response.status_code} {response.text}")


REPORT_LINES_PER_SERVICE = 12
REPORT_SERVICES = ("console", "planner", "resource-manager", "runtime-agent", "notifier")


def stuck_job_report(stack: Any, console: ConsoleClient, job_id: str) -> str:
    """What a job that did not settle in time was doing, for a test's failure message: its
    view, its timeline, the last log lines that mention it and the last warnings of each
    service (a machine-level stall names the machine, not the job)."""
    try:
        view = console.http.get(f"/api/v1/jobs/{job_id}").text
        events = console.http.get(f"/api/v1/jobs/{job_id}/events").text
    except httpx.TransportError as error:
        view, events = f"(console unreachable: {error})", ""
    report = [f"job: {view[:3000]}", f"timeline: {events[:4000]}"]
    for name in REPORT_SERVICES:
        path = stack.log_path(name)
        if not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()
        mentions = [line for line in lines if job_id in line]
        warnings = [
            line for line in lines if '"level": "warning"' in line or '"level": "error"' in line
        ]
        report.append(f"--- {name} ({len(mentions)} lines mention {job_id}):")
        report.extend(line[:600] for line in mentions[-REPORT_LINES_PER_SERVICE:])
        report.append(f"--- {name}: last warnings and errors ({len(warnings)}):")
        report.extend(line[:600] for line in warnings[-REPORT_LINES_PER_SERVICE:])
    return "\n".join(report)
