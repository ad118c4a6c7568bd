"""Run a demo batch end to end against a running console (the last step of ``./task up``).

Creates (or reuses) the model ``Sim Chat 1B`` and its deployment template ``sim-chat-demo``
v1.0.0, whose engine is the engine simulator launched over SSH; uploads a sample batch; creates a
job and follows it until it ends. The console URL and API key come from ``NEOBATCH_CONSOLE_URL`` /
``NEOBATCH_API_KEY`` when set, else from ``.run/stack.env`` written by ``devstack up``
(``demo_cli.py``, behind ``python -m neobatch.sim.demo``); the model and template are made with
the operator key (``NEOBATCH_OPERATOR_KEY``), the batch with the project key.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from neobatch.sim.devstack.sample_batch import write_sample_batch
from neobatch.sim.devstack.scenario import (
    ENDPOINT,
    MODEL,
    MODEL_NAME,
    TERMINAL,
    engine_command,
    model_id_for,
)
from neobatch.sim.testing.servers import free_port

MODEL_ID = model_id_for(MODEL_NAME)
TEMPLATE_NAME = "sim-chat-demo"
TEMPLATE_VERSION = "v1.0.0"
POLL_SECONDS = 0.5


class DemoError(RuntimeError):
    """The demo cannot go on; the message says which call failed and what the console said."""


def template_body(model_id: str, engine_port: int) -> dict[str, Any]:
    """A deployment template in the AIBrix shape, with the engine-simulator launch command."""
    return {
        "name": TEMPLATE_NAME,
        "version": TEMPLATE_VERSION,
        "model_id": model_id,
        "status": "active",
        "spec": {
            "engine": {
                # The simulator speaks vLLM's OpenAI-compatible API; `command` replaces the
                # `vllm serve` launch (see CONTRACTS.md, template extension).
                "type": "vllm",
                "version": "sim",
                "invocation": "http_server",
                "serve_args": [],
                "command": engine_command(),
                "port": engine_port,
                "health_endpoint": "/health",
                "ready_timeout_seconds": 60,
                "metrics_endpoint": "/metrics",
            },
            "model_source": {"type": "local", "uri": MODEL},
            "accelerator": {"type": "H100", "count": 1},
            "parallelism": {"tp": 1, "pp": 1, "dp": 1, "ep": 1},
            "supported_endpoints": [ENDPOINT],
            "deployment_mode": "dedicated",
        },
    }


def _event_time(event: Mapping[str, Any]) -> str:
    at = event.get("at")
    return (
        datetime.fromtimestamp(at).strftime("%H:%M:%S") if isinstance(at, int | float) else _now()
    )


def _now() -> str:
    return datetime.now().strftime("%H:%M:%S")


def _error_text(response: httpx.Response) -> str:
    text = response.text.strip()
    return text if len(text) <= 500 else text[:500] + "..."


def _json(response: httpx.Response, what: str) -> Any:
    if response.is_success:
        try:
            return response.json()
        except ValueError:
            raise DemoError(
                f"{what}: {response.request.url} answered HTTP {response.status_code} without "
                f"JSON: {_error_text(response)}"
            ) from None
    raise DemoError(
        f"{what}: {response.request.method} {response.request.url} returned HTTP "
        f"{response.status_code}: {_error_text(response)}"
    )


def _check(response: httpx.Response, what: str) -> dict[str, Any]:
    body = _json(response, what)
    if not isinstance(body, dict):
        raise DemoError(
            f"{what}: {response.request.url} answered {type(body).__name__}, not an object"
        )
    return body


class Demo:
    def __init__(
        self,
        client: httpx.Client,
        console_url: str,
        api_key: str,
        out: Callable[[str], None] = print,
        operator_key: str = "",
    ) -> None:
        self.client = client
        self.console_url = console_url
        self.api_key = api_key
        self.out = out
        # Models and templates need an operator key; without one the client's own key is tried.
        self.operator = {"Authorization": f"Bearer {operator_key}"} if operator_key else {}

    def ensure_model(self) -> str:
        response = self.client.post(
            "/api/v1/models",
            json={"name": MODEL_NAME, "categories": ["LLM"], "serving_name": MODEL},
            headers=self.operator,
        )
        if response.status_code == 409:
            model = _check(self.client.get(f"/api/v1/models/{MODEL_ID}"), "read existing model")
            self.out(f"model {model['id']} already exists; reusing it")
            return str(model["id"])
        model = _check(response, "create model")
        self.out(f"created model {model['id']}")
        return str(model["id"])

    def ensure_template(self, model_id: str) -> dict[str, Any]:
        base = f"/api/v1/models/{model_id}/deployment-templates"
        response = self.client.post(
            base, json=template_body(model_id, free_port()), headers=self.operator
        )
        if response.status_code == 409:
            # The plain list (filtered by name where the console supports it) works on every
            # console; `by-name/{name}` is an AIBrix route ours need not have.
            listed = _json(
                self.client.get(base, params={"name": TEMPLATE_NAME}),
                "list deployment templates",
            )
            rows = listed.get("data", []) if isinstance(listed, dict) else listed
            matches = [
                row
                for row in rows or []
                if isinstance(row, dict)
                and row.get("name") == TEMPLATE_NAME
                and row.get("version", TEMPLATE_VERSION) == TEMPLATE_VERSION
            ]
            if not matches:
                raise DemoError(
                    f"creating deployment template {TEMPLATE_NAME} {TEMPLATE_VERSION} conflicted "
                    f"(HTTP 409), but GET {base} does not list it: {_error_text(response)}"
                )
            template: dict[str, Any] = matches[0]
            self.out(f"deployment template {TEMPLATE_NAME} {TEMPLATE_VERSION} exists; reusing it")
            stored = template.get("spec", {}).get("engine", {}).get("command") or []
            if stored[:1] != [sys.executable]:
                # Created from another checkout or venv; its engine command may not run here.
                self.out(
                    f"warning: the stored template launches {stored[:1]}, not {sys.executable}"
                )
            return template
        template = _check(response, "create deployment template")
        self.out(f"created deployment template {TEMPLATE_NAME} {TEMPLATE_VERSION}")
        return template

    def upload(self, path: Path) -> str:
        with open(path, "rb") as content:
            response = self.client.post(
                "/api/v1/files/upload",
                data={"purpose": "batch"},
                files={"file": (path.name, content, "application/jsonl")},
            )
        uploaded = _check(response, "upload batch input")
        self.out(f"uploaded {path} as {uploaded['id']}")
        return str(uploaded["id"])

    def create_job(self, model_id: str, file_id: str) -> dict[str, Any]:
        job = _check(
            self.client.post(
                "/api/v1/jobs",
                json={
                    "input_dataset": file_id,
                    "endpoint": ENDPOINT,
                    "completion_window": "24h",
                    "name": f"sim-chat-demo-{datetime.now():%Y%m%d-%H%M%S}",
                    "model_id": model_id,
                    "model_template_name": TEMPLATE_NAME,
                    "model_template_version": TEMPLATE_VERSION,
                },
            ),
            "create job",
        )
        self.out(f"created job {job['id']}")
        return job

    def follow(self, job_id: str, timeout_seconds: float) -> dict[str, Any]:
        """Poll until a terminal status or the deadline, printing each change of status.

        Changes come from the job's `events` timeline, so a state that lasted less than one
        poll (provisioning on the local stack takes milliseconds) is still shown, at its time.
        """
        deadline = time.monotonic() + timeout_seconds
        printed: set[str] = set()
        job: dict[str, Any] = {"id": job_id}
        while True:
            try:
                job = _check(self.client.get(f"/api/v1/jobs/{job_id}"), "read job")
            except httpx.TransportError as error:
                # A console restart or a slow answer should not end the demo; the deadline will.
                self.out(f"{_now()}  (console did not answer: {error}; retrying)")
            else:
                status = str(job.get("status"))
                for event in job.get("events") or []:
                    if event.get("id") not in printed:
                        printed.add(event.get("id"))
                        self.out(
                            f"{_event_time(event)}  {event.get('status')}  ({event.get('label')})"
                        )
                if status in TERMINAL:
                    return job
            if time.monotonic() >= deadline:
                return job
            time.sleep(POLL_SECONDS)

    def report(self, job: dict[str, Any], timeout_seconds: float) -> int:
        status = job.get("status")
        job_id = job["id"]
        if status == "completed":
            output = job.get("output_dataset")
            url = f"{self.console_url}/api/v1/files/{output}/content"
            self.out(f"job {job_id} completed{_counts(job)}")
            self.out(f"output file: {output}")
            self.out(f"download:    GET {url}")
            self.out(
                f'             curl -sS -H "Authorization: Bearer {self.api_key}" {url} '
                "-o demo-output.jsonl"
            )
            if job.get("error_dataset"):
                self.out(f"error file:  {job['error_dataset']}")
            return 0
        if status in TERMINAL:
            message = job.get("error_message") or _first_errors(job) or "(no error_message)"
            self.out(f"job {job_id} ended {status}: {message}")
            return 1
        self.out(
            f"job {job_id} is still {status} after {timeout_seconds:g}s; giving up waiting. "
            f"It keeps running; cancel it with: curl -sS -X POST -H "
            f'"Authorization: Bearer {self.api_key}" {self.console_url}/api/v1/jobs/{job_id}/cancel'
        )
        return 1

    def run(self, requests: int, timeout_seconds: float, input_path: Path) -> int:
        self.out(f"console {self.console_url}")
        model_id = self.ensure_model()
        self.ensure_template(model_id)
        write_sample_batch(input_path, requests, MODEL, ENDPOINT)
        file_id = self.upload(input_path)
        job = self.create_job(model_id, file_id)
        final = self.follow(str(job["id"]), timeout_seconds)
        self.cli_equivalent(input_path, str(job["id"]))
        return self.report(final, timeout_seconds)

    def cli_equivalent(self, input_path: Path, job_id: str) -> None:
        """The web console page of the job, and the `neobatch` commands (clients/cli) that do
        what the demo just did."""
        self.out(
            f"web console: {web_console_url(self.console_url)} (log in with the API key "
            "NEOBATCH_API_KEY in .run/stack.env)"
        )
        self.out(f"  this job:  {web_console_url(self.console_url)}#/jobs/{job_id}")
        self.out("the same with the CLI (its console and key: `set -a; . .run/stack.env`):")
        self.out(
            f"  .venv/bin/neobatch submit {input_path} "
            f"--template {TEMPLATE_NAME}@{TEMPLATE_VERSION} --watch"
        )
        self.out(f"  .venv/bin/neobatch download {job_id} -o demo-output")


def web_console_url(console_url: str) -> str:
    """Where the console serves its web pages."""
    return f"{console_url.rstrip('/')}/ui/"


def _counts(job: Mapping[str, Any]) -> str:
    counts = job.get("request_counts") or {}
    if not counts.get("total"):
        return ""
    return (
        f"  (requests: {counts.get('completed', 0)}/{counts['total']} completed, "
        f"{counts.get('failed', 0)} failed)"
    )


def _first_errors(job: Mapping[str, Any], limit: int = 3) -> str:
    """OpenAI-style batch errors, as a list or as ``{"data": [...]}``, for jobs without a message."""
    errors = job.get("errors") or []
    if isinstance(errors, Mapping):
        errors = errors.get("data") or []
    parts = []
    for error in list(errors)[:limit]:
        if isinstance(error, Mapping):
            line = f" (line {error['line']})" if error.get("line") is not None else ""
            parts.append(f"{error.get('code', 'error')}: {error.get('message', '')}{line}")
    return "; ".join(parts)
