"""`neobatch quote` and `submit --max-cost`: the quote's table (cheapest first), the options
the console receives, a refusal over the cap showing the cheapest offer, and the exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from neobatch.cli import render
from neobatch.cli.api import Api
from neobatch.cli.config import Config
from neobatch.cli.errors import ExitCode
from neobatch.cli.main import main
from neobatch.cli.quote import show_quote
from neobatch.cli.state import State
from neobatch.cli.submit import job_body

KEY = "nb-secret-key-123"


def offer(provider: str, gpu: str, price: float, seconds: float, cost: float, **extra: Any) -> dict:
    return {"provider": provider, "offer": f"{provider}:{gpu}", "gpu_type": gpu,
            "gpu_family": gpu, "gpu_count": 1, "region": "r1", "price_per_hour": price,
            "available": True, "throughput_tokens_per_second": 2400.0,
            "throughput_source": "learned", "startup_seconds": 60.0,
            "expected_seconds": seconds, "expected_cost_usd": cost, **extra}  # fmt: skip


# The console's answer in its shape (services/console jobs/quote.py `Quote`), offers shuffled:
# an H100 dearer per hour but cheaper per job, an A100, and an unavailable cheaper one.
QUOTE = {
    "object": "job.quote", "model_id": "model_1", "model_template_name": "chat",
    "model_template_version": "v1.0.0", "providers": ["runpod", "ssh"], "requests": 3,
    "prompt_tokens": 120, "output_tokens": 3000, "output_tokens_per_request": 1000.0,
    "output_tokens_source": "default", "max_cost_usd": None, "expected_cost_usd": 0.1,
    "offers": [
        offer("runpod", "A100", 1.2, 660, 0.22),
        offer("runpod", "L4", 0.4, 900, 0.01, available=False),
        offer("ssh", "H100", 2.5, 144, 0.1),
    ],
}  # fmt: skip


@pytest.fixture
def screens(monkeypatch: pytest.MonkeyPatch) -> tuple[io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(render, "out", Console(file=out, width=160, highlight=False))
    monkeypatch.setattr(render, "err", Console(file=err, width=160, highlight=False))
    return out, err


def fake_console(monkeypatch: pytest.MonkeyPatch, answer: httpx.Response) -> list[httpx.Request]:
    seen: list[httpx.Request] = []

    def console(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        if request.url.path == "/api/v1/files/upload":
            return httpx.Response(200, json={"id": "file-1"})
        if request.method == "DELETE":
            return httpx.Response(200, json={"id": "file-1", "deleted": True})
        return answer

    api = Api(Config("http://console", KEY, "test"), transport=httpx.MockTransport(console))
    monkeypatch.setattr(State, "api", lambda self: api)
    return seen


def requests_file(tmp_path: Path, n: int = 3) -> Path:
    line = {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({**line, "custom_id": f"r{i}"}) + "\n" for i in range(n)))
    return path


def test_the_table_lists_offers_cheapest_per_job_first(screens: tuple) -> None:
    out, _ = screens
    show_quote(QUOTE)
    shown = out.getvalue()
    rows = [line for line in shown.splitlines() if line.split()[:1] in (["ssh"], ["runpod"])]
    assert [row.split()[1] for row in rows] == ["H100", "A100", "L4"]  # unavailable L4 last
    h100 = rows[0].split()
    assert "$2.50" in h100 and "2m24s" in h100 and "$0.1000" in h100 and "yes" in h100
    assert "no" in rows[2].split()
    assert "3 requests on chat@v1.0.0 (model_1)" in shown
    assert "cheapest: ssh H100 x1 (r1) $2.50/h: ~2m24s, $0.1000" in shown


def test_a_quote_without_offers_says_so(screens: tuple) -> None:
    out, _ = screens
    show_quote({**QUOTE, "offers": [], "expected_cost_usd": None})
    assert "no offer for this template's GPUs on runpod, ssh" in out.getvalue()


def test_quote_sends_a_dry_run_and_deletes_the_upload(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, screens: tuple, capsys: pytest.CaptureFixture
) -> None:
    seen = fake_console(monkeypatch, httpx.Response(200, json=QUOTE))
    argv = ["quote", str(requests_file(tmp_path)), "--template", "chat@v1.0.0",
            "--provider", "ssh", "--replicas", "2", "--json"]  # fmt: skip
    assert main(argv) == ExitCode.OK
    assert json.loads(capsys.readouterr().out) == QUOTE  # --json: the console's quote as is
    calls = [(r.method, r.url.path) for r in seen]
    assert calls == [("POST", "/api/v1/files/upload"), ("POST", "/api/v1/jobs"),
                     ("DELETE", "/api/v1/files/file-1")]  # fmt: skip
    body = json.loads(seen[1].content)
    assert body["dry_run"] is True and body["input_dataset"] == "file-1"
    assert (body["model_template_name"], body["model_template_version"]) == ("chat", "v1.0.0")
    assert body["provider"] == "ssh" and body["resource_request"] == {"replicas": 2}


def test_quote_validates_locally_before_uploading(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, screens: tuple
) -> None:
    _, err = screens
    seen = fake_console(monkeypatch, httpx.Response(200, json=QUOTE))
    path = requests_file(tmp_path)
    path.write_text(path.read_text() + "{not json\n")
    assert main(["quote", str(path), "--template", "chat"]) == ExitCode.INVALID_INPUT
    assert "line 4: invalid_json_line" in err.getvalue() and seen == []
    assert main(["quote", str(path), "--template", "chat@"]) == ExitCode.USAGE


def test_max_cost_is_sent_and_bounded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    body = job_body("file-1", "/v1/chat/completions", {"template": "t", "max_cost": 0.5})
    assert body["max_cost_usd"] == 0.5
    assert "max_cost_usd" not in job_body("file-1", "/v1/chat/completions", {"template": "t"})
    path = requests_file(tmp_path)
    for bad in ("0", "-1", "abc", "2e9"):
        assert main(["submit", str(path), "--max-cost", bad]) == ExitCode.USAGE
        assert "Invalid value for '--max-cost'" in capsys.readouterr().err


@pytest.mark.parametrize("as_json", [False, True])
def test_a_job_quoted_over_its_cap_is_refused_with_the_cheapest_offer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, screens: tuple, as_json: bool
) -> None:
    _, err = screens
    message = "max_cost_usd: the job is expected to cost $0.1000 at best, over its cap of $0.0010"
    refusal = {"code": "quote_exceeds_max_cost", "message": message,
               "quote": {**QUOTE, "max_cost_usd": 0.001}}  # fmt: skip
    seen = fake_console(monkeypatch, httpx.Response(422, json=refusal))
    argv = ["submit", str(requests_file(tmp_path)), "--template", "chat", "--max-cost", "0.001"]
    assert main(argv + (["--json"] if as_json else [])) == ExitCode.REFUSED
    assert json.loads(seen[-1].content)["max_cost_usd"] == 0.001
    shown = err.getvalue()
    if as_json:
        error = json.loads(shown)["error"]
        assert error["code"] == "quote_exceeds_max_cost" and error["status"] == 422
        assert error["quote"]["offers"][2]["offer"] == "ssh:H100"
    else:
        assert f"error: quote_exceeds_max_cost (HTTP 422): {message}" in shown
        assert "cheapest offer: ssh H100 x1 (r1) $2.50/h: ~2m24s, $0.1000" in shown
    assert KEY not in shown
