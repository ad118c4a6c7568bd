"""The demo client against a fake console (httpx.MockTransport) speaking the /api/v1 shapes."""

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from neobatch.sim.devstack import demo
from neobatch.sim.devstack.demo import Demo, DemoError
from neobatch.sim.devstack.demo_cli import Connection, load_connection
from neobatch.sim.devstack.layout import write_env_file

KEY = "nb-dev-local-key"
CONSOLE = "http://127.0.0.1:8080"


class FakeConsole:
    """Just enough of the console for the demo, recording every request it sees."""

    def __init__(self, statuses: list[dict[str, Any]], conflict: bool = False) -> None:
        self.statuses = statuses
        self.conflict = conflict
        self.requests: list[httpx.Request] = []
        self.template: dict[str, Any] | None = None
        self.job: dict[str, Any] | None = None
        self.uploaded: bytes = b""
        self.timeline: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(401, json={"code": "unauthorized"})
        route = (request.method, request.url.path)
        if route == ("POST", "/api/v1/models"):
            if self.conflict:
                return httpx.Response(409, json={"code": "conflict"})
            return httpx.Response(
                201, json={"id": "model-sim-chat-1b", **json.loads(request.content)}
            )
        if route == ("GET", "/api/v1/models/model-sim-chat-1b"):
            return httpx.Response(200, json={"id": "model-sim-chat-1b"})
        templates = "/api/v1/models/model-sim-chat-1b/deployment-templates"
        if route == ("POST", templates):
            if self.conflict:
                return httpx.Response(409, json={"code": "conflict"})
            self.template = json.loads(request.content)
            return httpx.Response(201, json={"id": "tpl-1", **self.template})
        if route == ("GET", templates):
            spec = {"engine": {"command": [sys.executable, "-m", "neobatch.sim.engine"]}}
            other = {"id": "tpl-0", "name": "sim-chat-demo", "version": "v0.9.0", "spec": {}}
            wanted = {"id": "tpl-1", "name": "sim-chat-demo", "version": "v1.0.0", "spec": spec}
            return httpx.Response(200, json={"data": [other, wanted]})
        if route == ("POST", "/api/v1/files/upload"):
            self.uploaded = request.content
            return httpx.Response(200, json={"id": "file-in", "purpose": "batch"})
        if route == ("POST", "/api/v1/jobs"):
            self.job = json.loads(request.content)
            return httpx.Response(201, json={"id": "job-1", "status": "queued"})
        if route == ("GET", "/api/v1/jobs/job-1"):
            current = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            if current["status"] not in self.timeline:
                self.timeline.append(current["status"])
            # The console's events timeline: one entry per status reached, with its time.
            events = [
                {"id": status, "status": status, "label": status, "at": 1_800_000_000 + i}
                for i, status in enumerate(self.timeline)
            ]
            return httpx.Response(200, json={"id": "job-1", "events": events, **current})
        return httpx.Response(404, json={"code": "not_found", "path": request.url.path})


def _run(console: FakeConsole, tmp_path: Path, timeout: float = 30) -> tuple[int, list[str]]:
    lines: list[str] = []
    client = httpx.Client(
        base_url=CONSOLE,
        headers={"Authorization": f"Bearer {KEY}"},
        transport=httpx.MockTransport(console),
    )
    with client:
        code = Demo(client, CONSOLE, KEY, out=lines.append).run(
            5, timeout, tmp_path / "batch_input.jsonl"
        )
    return code, lines


@pytest.fixture(autouse=True)
def _fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "POLL_SECONDS", 0.0)


def test_completed_job(tmp_path: Path) -> None:
    counts = {"total": 5, "completed": 5, "failed": 0}
    console = FakeConsole(
        [
            {"status": "queued"},
            {"status": "resource_preparing"},
            {"status": "resource_preparing"},
            {"status": "in_progress", "request_counts": {"total": 5, "completed": 2}},
            {"status": "completed", "output_dataset": "file-out", "request_counts": counts},
        ]
    )
    code, lines = _run(console, tmp_path)

    assert code == 0
    assert console.template is not None
    engine = console.template["spec"]["engine"]
    assert engine["command"][:3] == [sys.executable, "-m", "neobatch.sim.engine"]
    assert "{port}" in engine["command"] and "{model}" in engine["command"]
    assert isinstance(engine["port"], int)
    assert engine["health_endpoint"] == "/health"
    assert engine["ready_timeout_seconds"] == 60
    assert console.template["spec"]["accelerator"] == {"type": "H100", "count": 1}
    assert console.template["spec"]["supported_endpoints"] == ["/v1/chat/completions"]
    assert (console.template["name"], console.template["version"]) == ("sim-chat-demo", "v1.0.0")

    assert console.job is not None
    assert console.job["input_dataset"] == "file-in"
    assert console.job["model_id"] == "model-sim-chat-1b"
    assert console.job["model_template_name"] == "sim-chat-demo"
    assert console.job["model_template_version"] == "v1.0.0"
    assert console.job["completion_window"] == "24h"
    assert console.job["endpoint"] == "/v1/chat/completions"
    assert b'name="purpose"' in console.uploaded and b"batch" in console.uploaded
    assert b'"custom_id":"request-5"' in console.uploaded

    changes = [line for line in lines if line[:2].isdigit()]
    assert [line.split()[1] for line in changes] == [
        "queued",
        "resource_preparing",
        "in_progress",
        "completed",
    ]
    text = "\n".join(lines)
    assert "file-out" in text
    assert f"{CONSOLE}/api/v1/files/file-out/content" in text
    assert (
        f'curl -sS -H "Authorization: Bearer {KEY}" {CONSOLE}/api/v1/files/file-out/content' in text
    )
    # The CLI command that would have done the same (issue 18), without the key in it.
    submit = next(line for line in lines if "neobatch submit" in line)
    assert "--template sim-chat-demo@v1.0.0 --watch" in submit
    assert str(tmp_path) in submit and KEY not in submit
    assert any("neobatch download" in line for line in lines)
    # And where the web console shows it (issue 18), without the key in the address.
    web = [line for line in lines if f"{CONSOLE}/ui/" in line]
    assert web and all(KEY not in line for line in web)
    assert any(line.strip().endswith("/ui/#/jobs/job-1") for line in web), web


def test_conflicts_reuse_model_and_template(tmp_path: Path) -> None:
    console = FakeConsole([{"status": "completed", "output_dataset": "f"}], conflict=True)
    code, lines = _run(console, tmp_path)
    assert code == 0
    assert any("reusing" in line and "model-sim-chat-1b" in line for line in lines)
    assert any("sim-chat-demo v1.0.0 exists; reusing" in line for line in lines)
    assert not any("warning" in line for line in lines)
    assert console.job is not None
    assert console.job["model_template_version"] == "v1.0.0"


@pytest.mark.parametrize("status", ["failed", "resource_failed", "submit_failed", "expired"])
def test_failed_job_prints_error_message(tmp_path: Path, status: str) -> None:
    console = FakeConsole([{"status": status, "error_message": "no SSH host matches H100x1"}])
    code, lines = _run(console, tmp_path)
    assert code == 1
    assert f"ended {status}: no SSH host matches H100x1" in lines[-1]


def test_timeout_gives_up_with_exit_1(tmp_path: Path) -> None:
    console = FakeConsole([{"status": "in_progress"}])
    code, lines = _run(console, tmp_path, timeout=0.05)
    assert code == 1
    assert "still in_progress" in lines[-1]
    assert "/api/v1/jobs/job-1/cancel" in lines[-1]


def test_http_error_names_the_call(tmp_path: Path) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"code": "unavailable", "message": "mongo down"})

    console: Callable[[httpx.Request], httpx.Response] = broken
    with pytest.raises(DemoError, match=r"create model: POST .*/api/v1/models returned HTTP 503"):
        _run(console, tmp_path)  # type: ignore[arg-type]


def test_connection_from_env_or_stack_env(tmp_path: Path) -> None:
    env = {"NEOBATCH_CONSOLE_URL": "http://h:1/", "NEOBATCH_API_KEY": "k"}
    assert load_connection(env, lambda: tmp_path) == Connection("http://h:1", "k")

    write_env_file(
        tmp_path / "stack.env",
        {"NEOBATCH_CONSOLE_URL": "http://127.0.0.1:18080", "NEOBATCH_API_KEY": KEY},
    )
    assert load_connection({}, lambda: tmp_path) == Connection("http://127.0.0.1:18080", KEY)


def test_connection_missing_says_how_to_start(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match=r"\./task up"):
        load_connection({}, lambda: tmp_path)
