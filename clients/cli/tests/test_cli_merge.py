"""`neobatch merge`'s pure part (issue 18): every custom_id of the original input once, in its
order, with the newest success of the retry chain, else its newest error, else `no_result`;
and `retry`'s body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from neobatch.cli.api import Api
from neobatch.cli.config import Config
from neobatch.cli.errors import CliError
from neobatch.cli.merge import ResultIndex, Where, chain_order, merged_lines, result_of
from neobatch.cli.retry import retry_body, run_merge, run_retry
from neobatch.cli.state import State


def request(custom_id: str) -> bytes:
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/x", "body": {}}
    ).encode()


def ok(custom_id: str, job: str) -> bytes:
    response = {"status_code": 200, "request_id": job, "body": {"job": job}}
    return json.dumps(
        {"id": job, "custom_id": custom_id, "response": response, "error": None}
    ).encode()


def failed(custom_id: str, job: str, status: int | None = 500) -> bytes:
    response = {"status_code": status, "request_id": job, "body": {}} if status else None
    error = None if status else {"code": "batch_expired", "message": "expired"}
    return json.dumps(
        {"id": job, "custom_id": custom_id, "response": response, "error": error}
    ).encode()


def merge(inputs: list[bytes], files: list[list[bytes]]) -> list[tuple[str, str, str]]:
    """(custom_id, the job whose line was taken, kind) per merged line."""
    index = ResultIndex()
    for number, lines in enumerate(files):
        offsets, offset = [], 0
        for line in lines:
            offsets.append((offset, line))
            offset += len(line) + 1
        index.add(number, offsets)
    blobs = [b"".join(line + b"\n" for line in lines) for lines in files]

    def read(where: Where) -> bytes:
        return blobs[where.file][where.offset : where.offset + where.length]

    merged = []
    for item in merged_lines(inputs, index, read):
        line = json.loads(item.line)
        merged.append((item.custom_id, line["id"], item.kind))
    return merged


def test_every_custom_id_once_in_input_order_newest_result_wins() -> None:
    inputs = [b"\xef\xbb\xbf" + request("a"), request("b"), b"", request("c"), request("d"),
              request("e"), request("b")]  # fmt: skip
    files = [
        # The original: a ok, b and c failed, d and e never finished (cancelled); its output
        # file lists them out of input order.
        [ok("a", "X")],
        [failed("c", "X"), failed("b", "X", None)],
        # The first retry: b ok, c failed again, d ok; e still unfinished.
        [ok("d", "R1"), ok("b", "R1")],
        [failed("c", "R1")],
        # The retry of the retry: c failed once more.
        [failed("c", "R2", 503)],
    ]
    assert merge(inputs, files) == [
        ("a", "X", "succeeded"),
        ("b", "R1", "succeeded"),
        ("c", "R2", "failed"),  # still failed: the newest error file's line
        ("d", "R1", "succeeded"),
        ("e", None, "missing"),  # no job finished it: an error line of its own
    ]


def test_a_success_is_not_replaced_by_a_later_error() -> None:
    # Two retries of the same job both ran "a": the first answered it, the second did not.
    files = [[], [failed("a", "X")], [ok("a", "R1")], [], [], [failed("a", "R1b")]]
    assert merge([request("a")], files) == [("a", "R1", "succeeded")]


def test_result_lines_are_read_for_their_custom_id_and_outcome() -> None:
    assert result_of(ok("a", "X")) == ("a", True)
    assert result_of(failed("a", "X")) == ("a", False)
    assert result_of(failed("a", "X", None)) == ("a", False)
    assert result_of(b"{broken") is None


def test_the_chain_is_read_oldest_first() -> None:
    walked = [{"id": "X", "created_at": 10}, {"id": "R1", "created_at": 20},
              {"id": "R1b", "created_at": 30}, {"id": "R2", "created_at": 20}]  # fmt: skip
    assert [job["id"] for job in chain_order(walked)] == ["X", "R1", "R2", "R1b"]


def test_the_retry_body_holds_only_what_was_asked() -> None:
    assert retry_body(None, None, None) == {}
    assert retry_body("tpl@v2", 3, 1.5) == {
        "model_template": "tpl@v2", "replicas": 3, "max_cost_usd": 1.5,
    }  # fmt: skip
    with pytest.raises(CliError):
        retry_body("tpl@", None, None)


def test_run_merge_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "merged.jsonl"
    target.write_text("keep")
    with pytest.raises(CliError) as refused:
        run_merge(State(), "job_x", target, force=False)
    assert refused.value.code == "file_exists" and target.read_text() == "keep"


def fake_console(
    monkeypatch: pytest.MonkeyPatch, jobs: dict[str, dict[str, Any]], files: dict[str, bytes]
) -> list[httpx.Request]:
    seen: list[httpx.Request] = []

    def answer(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        parts = req.url.path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "files"] and parts[-1] == "content":
            return httpx.Response(200, content=files[parts[3]])
        if req.method == "POST" and parts[-1] == "retry":
            return httpx.Response(200, json={**jobs["R1"], "status": "queued"})
        if parts[:3] == ["api", "v1", "jobs"] and parts[3] in jobs:
            return httpx.Response(200, json=jobs[parts[3]])
        return httpx.Response(404, json={"code": "job_not_found", "message": "no"})

    api = Api(Config("http://console", "nb-k", "test"), transport=httpx.MockTransport(answer))
    monkeypatch.setattr(State, "api", lambda self: api)
    return seen


JOBS = {
    "X": {"id": "X", "status": "completed", "created_at": 1, "input_dataset": "in",
          "output_dataset": "xo", "error_dataset": "xe", "retried_by": ["R1"]},
    "R1": {"id": "R1", "status": "completed", "created_at": 2, "input_dataset": "in-r1",
           "output_dataset": "r1o", "error_dataset": None, "retried_by": [], "retry_of": "X",
           "request_counts": {"total": 2}},
}  # fmt: skip
FILES = {
    "in": b"\n".join(request(c) for c in "abcd") + b"\n",
    "xo": ok("d", "X") + b"\n" + ok("a", "X") + b"\n",
    "xe": failed("b", "X") + b"\n" + failed("c", "X") + b"\n",
    "r1o": ok("c", "R1") + b"\n" + ok("b", "R1") + b"\n",
}


def test_merge_reads_the_chain_and_writes_the_input_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_console(monkeypatch, JOBS, FILES)
    target = tmp_path / "all.jsonl"
    state = State(json=True)
    assert run_merge(state, "X", target, force=False) == 0
    lines = [json.loads(x) for x in target.read_text().splitlines()]
    assert [(x["custom_id"], x["id"]) for x in lines] == [
        ("a", "X"), ("b", "R1"), ("c", "R1"), ("d", "X"),
    ]  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["jobs"] == ["X", "R1"] and summary["succeeded"] == 4
    assert not list(tmp_path.glob("*.part"))


def test_retry_sends_the_overrides_and_an_idempotency_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = fake_console(monkeypatch, JOBS, FILES)
    state = State(json=True)
    assert run_retry(state, "X", template="other@v2", replicas=2, max_cost=None) == 0
    [sent] = seen
    assert sent.url.path == "/api/v1/jobs/X/retry"
    assert json.loads(sent.content) == {"model_template": "other@v2", "replicas": 2}
    assert sent.headers["Idempotency-Key"].startswith("cli-")
    assert json.loads(capsys.readouterr().out)["retry_of"] == "X"
