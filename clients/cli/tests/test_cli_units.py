"""The CLI's pure parts: where its key comes from (and that it never shows), local validation
of long lines, the watch figures, the server's errors as exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest

from neobatch.cli.api import Api
from neobatch.cli.config import Config, load_config
from neobatch.cli.errors import CliError, ExitCode
from neobatch.cli.progress import Tracker
from neobatch.cli.submit import job_body, split_template
from neobatch.cli.validate import check_file, lines

KEY = "nb-secret-key-123"


def test_environment_wins_over_the_profile_and_the_key_never_shows(tmp_path: Path) -> None:
    profile = tmp_path / "config.toml"
    profile.write_text(
        '[default]\nconsole_url = "http://profile:8080"\napi_key = "nb-profile"\n'
        '[staging]\nconsole_url = "https://staging.example"\napi_key = "nb-staging"\n'
    )
    env = {"NEOBATCH_CONFIG": str(profile)}
    assert load_config(None, None, env) == Config(
        "http://profile:8080", "nb-profile", "profile 'default'"
    )
    staging = load_config(None, "staging", env)
    assert (staging.console_url, staging.api_key) == ("https://staging.example", "nb-staging")
    env |= {"NEOBATCH_API_KEY": KEY, "NEOBATCH_CONSOLE_URL": "http://env:1/"}
    config = load_config(None, None, env)
    assert (config.console_url, config.api_key) == ("http://env:1", KEY)
    assert load_config("http://flag:2", None, env).console_url == "http://flag:2"
    assert KEY not in repr(config)


def test_missing_key_or_profile_is_a_usage_error(tmp_path: Path) -> None:
    env = {"NEOBATCH_CONFIG": str(tmp_path / "none.toml")}
    with pytest.raises(CliError) as missing:
        load_config(None, None, env)
    assert (missing.value.code, missing.value.exit_code) == ("no_api_key", ExitCode.USAGE)
    with pytest.raises(CliError, match="does not exist"):
        load_config(None, "prod", env)


def test_an_overlong_line_is_cut_before_it_is_read_whole() -> None:
    long = b"x" * 5000
    data = io.BytesIO(b'{"a": 1}\n' + long + b"\nlast")
    assert list(lines(data, max_line_bytes=100)) == [b'{"a": 1}', b"x" * 101, b"last"]


def test_local_validation_uses_the_servers_rules(tmp_path: Path) -> None:
    good = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "url": "/v1/completions"}))
    checked = check_file(path)
    assert checked.endpoint == "/v1/embeddings"  # from the first line
    assert [(e.line, e.code) for e in checked.report.errors] == [(3, "mismatched_endpoint")]


def test_template_option_and_job_body() -> None:
    assert split_template("chat@v1.2.0") == ("chat", "v1.2.0")
    assert split_template("chat") == ("chat", "")
    for bad in ("@v1", "chat@"):
        with pytest.raises(CliError):
            split_template(bad)
    body = job_body("file-1", "/v1/chat/completions",
                    {"template": "t@v2", "replicas": 2, "provider": "runpod", "window": "2h"})  # fmt: skip
    assert body["model_template_name"] == "t" and body["model_template_version"] == "v2"
    assert body["resource_request"] == {"replicas": 2} and body["provider"] == "runpod"
    assert body["completion_window"] == "2h"


def test_watch_figures_rate_eta_and_cost() -> None:
    tracker = Tracker()

    def job(status: str, done: int) -> dict:
        return {"id": "job_1", "status": status, "bill": {"total_usd": 0.5, "final": False},
                "request_counts": {"total": 100, "completed": done, "failed": 0}}  # fmt: skip

    first = tracker.update(job("in_progress", 0), now=0)
    assert first.rate is None and first.eta_seconds is None
    later = tracker.update(job("in_progress", 20), now=10)
    assert later.rate == pytest.approx(2.0) and later.eta_seconds == pytest.approx(40)
    assert "ETA 40s" in later.line() and "$0.5000 so far" in later.line()


def test_the_servers_code_and_message_become_the_error() -> None:
    def console(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        if request.url.path.endswith("/job_x"):
            return httpx.Response(
                404, json={"code": "job_not_found", "message": "job 'job_x' not found"}
            )
        return httpx.Response(503, text="upstream down")

    api = Api(Config("http://console", KEY, "test"), transport=httpx.MockTransport(console))
    with pytest.raises(CliError) as missing:
        api.job("job_x")
    error = missing.value
    assert (error.code, error.status, error.exit_code) == ("job_not_found", 404, ExitCode.REFUSED)
    assert error.message == "job 'job_x' not found"
    with pytest.raises(CliError) as down:
        api.jobs(20, None)
    assert (down.value.code, down.value.exit_code) == ("http_503", ExitCode.UNAVAILABLE)
    assert KEY not in str(missing.value) + str(down.value)


@pytest.mark.parametrize("terminal", [True, False])
def test_watch_follows_a_job_to_its_end(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    """The live bar (a terminal) and the plain lines (a pipe) both end with the job's exit code."""
    from rich.console import Console

    from neobatch.cli import render, watch

    views = [("queued", 0), ("in_progress", 10), ("in_progress", 60), ("completed", 100)]

    def console(request: httpx.Request) -> httpx.Response:
        status, done = views.pop(0) if len(views) > 1 else views[0]
        return httpx.Response(200, json={
            "id": "job_1", "status": status, "bill": {"total_usd": 0.25, "final": status == "completed"},
            "request_counts": {"total": 100, "completed": done, "failed": 0}})  # fmt: skip

    err, out = io.StringIO(), io.StringIO()
    monkeypatch.setattr(render, "err", Console(file=err, force_terminal=terminal, width=120))
    monkeypatch.setattr(render, "out", Console(file=out, force_terminal=False, width=120))
    monkeypatch.setattr(watch.time, "sleep", lambda _s: None)
    api = Api(Config("http://console", KEY, "test"), transport=httpx.MockTransport(console))
    assert watch.watch_job(api, "job_1", 0.2, 0, as_json=False) == ExitCode.OK
    assert "job_1 completed  100/100 (100%)  cost $0.2500" in out.getvalue()
    shown = err.getvalue()
    assert "100/100" in shown and ("━" in shown) == terminal
    if not terminal:
        assert "job_1 queued" in shown and "job_1 in_progress" in shown


def test_submit_uploads_with_a_progress_bar_then_creates_the_job(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rich.console import Console

    from neobatch.cli import render
    from neobatch.cli.state import State
    from neobatch.cli.submit import run_submit

    seen: dict[str, bytes | dict] = {}

    def console(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/files/upload":
            seen["upload"] = request.read()
            return httpx.Response(200, json={"id": "file-1"})
        seen["job"] = json.loads(request.read())
        return httpx.Response(200, json={"id": "job_1", "status": "queued"})

    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"m": 1}}
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(
        json.dumps({**line, "custom_id": f"r{i}"}) for i in range(5000)))  # fmt: skip
    err, out = io.StringIO(), io.StringIO()
    monkeypatch.setattr(
        render,
        "err",
        Console(file=err, force_terminal=True, width=120, highlight=False, color_system=None),
    )
    monkeypatch.setattr(render, "out", Console(file=out, force_terminal=False, width=120))
    api = Api(Config("http://console", KEY, "test"), transport=httpx.MockTransport(console))
    monkeypatch.setattr(State, "api", lambda self: api)
    code = run_submit(State(), path, template="chat@v1", window="24h", watch=False)
    assert code == ExitCode.OK
    assert path.read_bytes() in seen["upload"]  # type: ignore[operator]
    assert seen["job"] == {
        "input_dataset": "file-1", "endpoint": "/v1/chat/completions", "completion_window": "24h",
        "name": "", "model_template_name": "chat", "model_template_version": "v1"}  # fmt: skip
    shown = err.getvalue()
    size = f"{path.stat().st_size / 1000:.1f}"
    assert "5000 requests" in shown and "upload ━" in shown and f"{size}/{size} kB" in shown
    assert "job_1 queued" in out.getvalue()
