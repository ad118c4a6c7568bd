"""The `neobatch` CLI end to end (issue 18), run as a subprocess against the local stack, the
way a person types it: submit --watch to completion, download, a file with bad lines named
locally (nothing uploaded), cancel, the server's error code, a quote (nothing created) and a
`--max-cost` under it refused, a retry of the lines an engine failed and the merge of both
outputs in input order, and never a key on screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient, batch_lines, sim_engine_template

NEOBATCH = Path(sys.executable).parent / "neobatch"
H100_PER_HOUR = 2.5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = Ports.free()
    env = {
        "NEOBATCH_DB": "cli",
        # The one pool host described and priced, so a quote has an offer with a cost.
        "NEOBATCH_SSH_POOL": f"u0@127.0.0.1:{ports.ssh}=H100x1",
        "NEOBATCH_SSH_POOL_PRICES": f"H100={H100_PER_HOUR}",
        # The cancelled job's requests hang: they are cut this long after the cancel.
        "NEOBATCH_CANCEL_GRACE_SECONDS": "2",
    }
    with start_stack(tmp_path_factory.mktemp("stack"), ports, env) as started:
        yield started


@pytest.fixture(scope="module")
def templates(console: ConsoleClient, model_id: str) -> dict[str, str]:
    console.create_template(model_id, sim_engine_template("cli-fast", model_id))
    # Every request hangs: the job stays in progress until it is cancelled.
    slow = sim_engine_template("cli-slow", model_id, hang_rate=1.0, hang_seconds=120)
    console.create_template(model_id, slow)
    return {"fast": "cli-fast@v1.0.0", "slow": "cli-slow"}


class Run:
    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.code, self.out, self.err = done.returncode, done.stdout, done.stderr

    def json(self) -> Any:
        return json.loads(self.out)


def neobatch(stack: Stack, *args: str, timeout: float = 120, key: str = "") -> Run:
    key = key or stack.api_key
    env = {
        **os.environ,
        "NEOBATCH_CONSOLE_URL": stack.console_url,
        "NEOBATCH_API_KEY": key,
        "NEOBATCH_CONFIG": "/nonexistent/neobatch.toml",
    }
    done = subprocess.run(
        [str(NEOBATCH), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    run = Run(done)
    # Whatever happened, the key is never shown.
    assert key not in run.out + run.err
    return run


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_submit_watch_to_completion_then_download(
    stack: Stack, templates: dict[str, str], tmp_path: Path
) -> None:
    requests = write_lines(tmp_path / "requests.jsonl", batch_lines(25))
    run = neobatch(stack, "submit", str(requests), "--template", templates["fast"], "--watch",
                   "--interval", "0.3", "--json", "--name", "cli-e2e")  # fmt: skip
    assert run.code == 0, run.err
    job = run.json()
    assert job["status"] == "completed" and job["name"] == "cli-e2e"
    assert job["request_counts"] == {"total": 25, "completed": 25, "failed": 0}
    assert job["model_template_name"] == "cli-fast"

    # The human form of the same job, and its timeline.
    shown = neobatch(stack, "get", job["id"])
    assert shown.code == 0 and "completed" in shown.out and "25/25" in shown.out
    timeline = neobatch(stack, "events", job["id"], "--json")
    assert [e["id"] for e in timeline.json()][-1] == "completed"
    listed = neobatch(stack, "list", "--json").json()
    assert job["id"] in [j["id"] for j in listed["jobs"]]

    out_dir = tmp_path / "out"
    got = neobatch(stack, "download", job["id"], "-o", str(out_dir), "--json")
    assert got.code == 0, got.err
    files = {f["kind"]: Path(f["path"]) for f in got.json()["files"]}
    output = [json.loads(line) for line in files["output"].read_text().splitlines()]
    assert sorted(line["custom_id"] for line in output) == sorted(
        line["custom_id"] for line in batch_lines(25)
    )
    assert all(line["response"]["status_code"] == 200 for line in output)
    # A second download refuses to overwrite without --force.
    again = neobatch(stack, "download", job["id"], "-o", str(out_dir))
    assert again.code == 2 and "file_exists" in again.err


def test_bad_lines_are_named_locally_and_nothing_is_uploaded(
    stack: Stack, console: ConsoleClient, templates: dict[str, str], tmp_path: Path
) -> None:
    good = batch_lines(3)
    no_id = {k: v for k, v in good[2].items() if k != "custom_id"}
    requests = write_lines(tmp_path / "bad.jsonl", [good[0], "{not json", good[1], no_id, good[0]])
    files_before = console.http.get("/api/v1/files", params={"limit": 100}).json()["data"]

    run = neobatch(stack, "submit", str(requests), "--template", templates["fast"])
    assert run.code == 3, run.err
    for expected in ("line 2: invalid_json_line", "line 4: missing_required_parameter",
                     "line 5: duplicate_custom_id"):  # fmt: skip
        assert expected in run.err, run.err
    as_json = neobatch(stack, "submit", str(requests), "--json")
    assert as_json.code == 3 and as_json.out == ""
    error = json.loads(as_json.err)["error"]
    assert error["code"] == "invalid_input_file"
    assert [(e["line"], e["code"]) for e in error["errors"]] == [
        (2, "invalid_json_line"),
        (4, "missing_required_parameter"),
        (5, "duplicate_custom_id"),
    ]
    files_after = console.http.get("/api/v1/files", params={"limit": 100}).json()["data"]
    assert len(files_after) == len(files_before)


def test_cancel_a_running_job_and_watch_it_end(
    stack: Stack, templates: dict[str, str], tmp_path: Path
) -> None:
    requests = write_lines(tmp_path / "requests.jsonl", batch_lines(10))
    created = neobatch(stack, "submit", str(requests), "--template", templates["slow"], "--json")
    assert created.code == 0, created.err
    job_id = created.json()["id"]
    cancelled = neobatch(stack, "cancel", job_id, "--json")
    assert cancelled.code == 0, cancelled.err
    assert cancelled.json()["status"] not in {"completed", "failed"}
    watched = neobatch(stack, "watch", job_id, "--interval", "0.3", "--timeout", "150", timeout=200)
    assert watched.code == 6, (watched.out, watched.err)  # ended, but not completed
    assert f"{job_id} cancelled" in watched.out


def test_the_servers_error_code_and_message_are_shown(
    stack: Stack, templates: dict[str, str]
) -> None:
    missing = neobatch(stack, "get", "job_doesnotexist")
    assert missing.code == 4
    assert "job_not_found" in missing.err and "HTTP 404" in missing.err
    as_json = neobatch(stack, "get", "job_doesnotexist", "--json")
    assert json.loads(as_json.err)["error"]["code"] == "job_not_found"
    # A project key may not write the catalog: the console's 403, its code.
    refused = neobatch(stack, "models", "create", "--name", "x", "--serving-name", "x")
    assert refused.code == 4 and "operator_only" in refused.err
    shown = neobatch(stack, "templates", "show", "cli-fast", "--json")
    assert shown.code == 0 and shown.json()["name"] == "cli-fast"


def test_an_operator_creates_a_template_from_yaml(
    stack: Stack, model_id: str, tmp_path: Path
) -> None:
    body = sim_engine_template("cli-from-yaml", model_id)
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump({**body, "model_id": model_id}, sort_keys=False))
    created = neobatch(stack, "templates", "create", "-f", str(path), "--json",
                       key=stack.operator_key)  # fmt: skip
    assert created.code == 0, created.err
    assert (created.json()["name"], created.json()["version"]) == ("cli-from-yaml", "v1.0.0")
    listed = neobatch(stack, "templates", "list", "--model", model_id, "--json").json()
    assert "cli-from-yaml" in {t["name"] for t in listed}
    # The same file again: the console's conflict, its code.
    again = neobatch(stack, "templates", "create", "-f", str(path), key=stack.operator_key)
    assert again.code == 4 and "template_exists" in again.err


def job_ids(console: ConsoleClient) -> set[str]:
    page = console.http.get("/api/v1/jobs", params={"limit": 100}).json()
    return {job["id"] for job in page["jobs"]}


def file_ids(console: ConsoleClient) -> set[str]:
    page = console.http.get("/api/v1/files", params={"limit": 100}).json()
    return {f["id"] for f in page["data"]}


def test_a_quote_lists_the_offer_and_creates_nothing(
    stack: Stack, console: ConsoleClient, templates: dict[str, str], tmp_path: Path
) -> None:
    requests = write_lines(tmp_path / "requests.jsonl", batch_lines(5))
    jobs_before, files_before = job_ids(console), file_ids(console)
    run = neobatch(stack, "quote", str(requests), "--template", templates["fast"], "--json")
    assert run.code == 0, run.err
    quote = run.json()
    assert quote["object"] == "job.quote" and quote["requests"] == 5
    assert quote["model_template_name"] == "cli-fast" and quote["prompt_tokens"] > 0
    [offer] = quote["offers"]  # the pool's one H100, at the operator's price
    assert (offer["provider"], offer["gpu_type"], offer["price_per_hour"]) == (
        "ssh", "H100", H100_PER_HOUR,
    )  # fmt: skip
    assert offer["expected_cost_usd"] == pytest.approx(
        H100_PER_HOUR * offer["expected_seconds"] / 3600, rel=1e-3
    )
    shown = neobatch(stack, "quote", str(requests), "--template", templates["fast"])
    assert shown.code == 0, shown.err
    assert "5 requests on cli-fast@v1.0.0" in shown.out and "cheapest: ssh H100 x1" in shown.out
    # Nothing queued or leased, and the uploads were deleted again.
    assert job_ids(console) == jobs_before and file_ids(console) == files_before


def test_submit_with_a_cap_far_below_the_quote_is_refused(
    stack: Stack, console: ConsoleClient, templates: dict[str, str], tmp_path: Path
) -> None:
    requests = write_lines(tmp_path / "requests.jsonl", batch_lines(5))
    jobs_before = job_ids(console)
    run = neobatch(stack, "submit", str(requests), "--template", templates["fast"],
                   "--max-cost", "0.000001")  # fmt: skip
    assert run.code == 4, (run.out, run.err)
    assert "quote_exceeds_max_cost (HTTP 422)" in run.err and "over its cap" in run.err
    assert "cheapest offer: ssh H100 x1" in run.err
    as_json = neobatch(stack, "submit", str(requests), "--template", templates["fast"],
                       "--max-cost", "0.000001", "--json")  # fmt: skip
    error = json.loads(as_json.err)["error"]
    assert as_json.code == 4 and error["code"] == "quote_exceeds_max_cost"
    assert error["quote"]["max_cost_usd"] == 0.000001 and error["quote"]["offers"]
    assert job_ids(console) == jobs_before  # refused at creation: no job


def test_retry_the_failed_lines_then_merge_them_back_in_order(
    stack: Stack, console: ConsoleClient, model_id: str, templates: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    # An engine that answers 500 to about a third of the requests, chosen by their body (so the
    # same request fails every time), and a job that does not retry them: they end in the
    # error file.
    flaky = sim_engine_template("cli-flaky", model_id, failure_rate=0.35, seed=5)
    console.create_template(model_id, flaky)
    lines = batch_lines(20)
    original = console.create_job(
        console.upload(lines), model_id, "cli-flaky", metadata={"run": "nightly"},
        client={"retry_policy": {"max_retries": 0}},
    )  # fmt: skip
    ended = console.wait_job(original["id"], lambda j: j["status"] in {"completed", "failed"}, 90)
    failed = {line["custom_id"] for line in console.file_lines(ended["error_dataset"])}
    assert 0 < len(failed) < 20, ended["request_counts"]
    assert ended["request_counts"]["failed"] == len(failed)

    # Retried on the template whose engine never fails, followed to its end.
    run = neobatch(stack, "retry", original["id"], "--template", templates["fast"], "--watch",
                   "--interval", "0.3", "--json")  # fmt: skip
    assert run.code == 0, (run.out, run.err)
    retry = run.json()
    assert retry["status"] == "completed" and retry["retry_of"] == original["id"]
    assert retry["request_counts"] == {"total": len(failed), "completed": len(failed), "failed": 0}
    assert retry["model_template_name"] == "cli-fast" and retry["metadata"] == {"run": "nightly"}
    # Its input holds exactly the failed lines, as uploaded, in their order.
    content = console.http.get(f"/api/v1/files/{retry['input_dataset']}/content").text
    assert content == "".join(json.dumps(x) + "\n" for x in lines if x["custom_id"] in failed)
    assert console.job(original["id"])["retried_by"] == [retry["id"]]
    timeline = retry["events"]
    assert timeline[0]["id"] == "retry_of" and original["id"] in timeline[0]["message"]

    merged_path = tmp_path / "merged.jsonl"
    merged = neobatch(stack, "merge", original["id"], "-o", str(merged_path), "--json")
    assert merged.code == 0, merged.err
    summary = merged.json()
    assert summary["jobs"] == [original["id"], retry["id"]]
    assert (summary["lines"], summary["succeeded"], summary["missing"]) == (20, 20, 0)
    result = [json.loads(x) for x in merged_path.read_text().split("\n") if x]
    assert [x["custom_id"] for x in result] == [x["custom_id"] for x in lines]
    assert all(x["response"]["status_code"] == 200 for x in result)
    # The failed lines' answers are the retry's.
    retried = {x["custom_id"]: x["id"] for x in console.file_lines(retry["output_dataset"])}
    assert {x["custom_id"]: x["id"] for x in result if x["custom_id"] in failed} == retried
