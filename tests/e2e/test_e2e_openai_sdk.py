"""The real `openai` SDK against the whole local stack: what code written for OpenAI does.

One stack for the module. The SDK is built with `_strict_response_validation=True`, so every
response must match the SDK's own models. Batches run on the engine simulator over SSH. No
default template is configured: a batch without metadata runs on the template of the model its
lines name (two are published for it here, and the model marks `sim-chat-demo` its default).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.demo import TEMPLATE_NAME, Demo, template_body
from neobatch.sim.devstack.sample_batch import sample_request
from neobatch.sim.devstack.scenario import MODEL, engine_command
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until

CHAT = "/v1/chat/completions"
SLOW_TEMPLATE = "sdk-slow"
DONE = {"completed", "failed", "expired", "cancelled"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"NEOBATCH_DB": "e2e_openai"}
    started = start_stack(tmp_path_factory.mktemp("stack"), Ports.free(), env)
    try:
        headers = {"Authorization": f"Bearer {started.api_key}"}
        with httpx.Client(base_url=started.console_url, headers=headers, timeout=30) as http:
            demo = Demo(
                http,
                started.console_url,
                started.api_key,
                out=lambda _line: None,
                operator_key=started.operator_key,
            )
            model_id = demo.ensure_model()
            demo.ensure_template(model_id)
            slow = template_body(model_id, free_port())
            slow["name"] = SLOW_TEMPLATE
            slow["spec"]["engine"]["command"] = [*engine_command(), "--latency-ms", "500"]
            created = http.post(
                f"/api/v1/models/{model_id}/deployment-templates", json=slow, headers=demo.operator
            )
            assert created.status_code == 200, created.text
            default = {"default_template": TEMPLATE_NAME}
            marked = http.put(f"/api/v1/models/{model_id}", json=default, headers=demo.operator)
            assert marked.status_code == 200, marked.text
        yield started
    finally:
        started.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{stack.console_url}/v1",
        api_key=stack.api_key,
        _strict_response_validation=True,
        max_retries=0,
    ) as sdk:
        yield sdk


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def upload(client: openai.OpenAI, path: Path) -> Any:
    with open(path, "rb") as fh:
        return client.files.create(file=fh, purpose="batch")


def requests(n: int, model: str = MODEL) -> list[dict[str, Any]]:
    return [sample_request(i, model) for i in range(1, n + 1)]


async def finished(client: openai.OpenAI, batch_id: str, timeout_seconds: float) -> Any:
    def done() -> Any:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in DONE else None

    return await wait_until(done, timeout_seconds, interval=0.2, message=f"{batch_id} ended")


async def test_upload_create_poll_and_download(client: openai.OpenAI, tmp_path: Path) -> None:
    lines = requests(20)
    # The engine refuses streaming with a 400: that request goes to the error file.
    bad = sample_request(21, MODEL)
    lines.append({**bad, "custom_id": "streamed", "body": {**bad["body"], "stream": True}})
    uploaded = upload(client, write_lines(tmp_path / "input.jsonl", lines))
    assert uploaded.purpose == "batch" and uploaded.filename == "input.jsonl"
    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes
    assert client.files.content(uploaded.id).text == (tmp_path / "input.jsonl").read_text()

    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"team": "sdk"},
    )
    assert batch.status == "validating" and batch.metadata == {"team": "sdk"}
    assert batch.input_file_id == uploaded.id and batch.expires_at > batch.created_at

    batch = await finished(client, batch.id, timeout_seconds=120)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (21, 20)
    assert batch.request_counts.failed == 1 and batch.completed_at and batch.in_progress_at
    assert batch.usage is not None and batch.usage.input_tokens > 0
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens

    assert batch.output_file_id and batch.error_file_id
    output = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in output) == sorted(x["custom_id"] for x in lines[:20])
    assert all(x["response"]["status_code"] == 200 for x in output)
    errors = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert [x["custom_id"] for x in errors] == ["streamed"]
    assert errors[0]["response"]["status_code"] == 400
    meta = client.files.retrieve(batch.output_file_id)
    assert meta.purpose == "batch_output"


def job_of(stack: Stack, batch_id: str) -> dict[str, Any]:
    """The AIBrix view of a batch: it names the template the batch ran on."""
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    jobs = httpx.get(f"{stack.console_url}/api/v1/jobs", headers=headers, timeout=30).json()
    [job] = [j for j in jobs["jobs"] if j["batch_id"] == batch_id]
    return dict(job)


async def test_a_plain_sdk_batch_needs_no_metadata(
    client: openai.OpenAI, stack: Stack, tmp_path: Path
) -> None:
    """Issue 13: code written for OpenAI names only `body.model`; that picks the template."""
    uploaded = upload(client, write_lines(tmp_path / "plain.jsonl", requests(3)))
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    batch = await finished(client, batch.id, timeout_seconds=120)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None and batch.request_counts.completed == 3
    job = job_of(stack, batch.id)
    assert (job["model_template_name"], job["model"]) == (TEMPLATE_NAME, MODEL)

    # Lines naming two models: a 400 naming them, and no batch.
    other = {**requests(1)[0], "custom_id": "other"}
    other["body"] = {**other["body"], "model": "another-model"}
    mixed = upload(client, write_lines(tmp_path / "mixed.jsonl", [*requests(1), other]))
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=mixed.id, endpoint=CHAT, completion_window="24h")
    assert refused.value.response.json()["code"] == "multiple_models"
    assert "another-model" in refused.value.response.json()["message"]


async def test_broken_input_is_a_failed_batch_with_line_numbers(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    good = requests(5)
    lines: list[Any] = [good[0], "{not json", good[1], {"method": "POST", "url": CHAT, "body": {}}]
    lines += [good[2], {**good[3], "url": "/v1/embeddings"}, {**good[4], "custom_id": "request-1"}]
    uploaded = upload(client, write_lines(tmp_path / "broken.jsonl", lines))
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.object == "list"
    found = [(e.line, e.code, e.param) for e in batch.errors.data or []]
    assert found == [
        (2, "invalid_json_line", None),
        (4, "missing_required_parameter", "custom_id"),
        (6, "mismatched_endpoint", "url"),
        (7, "duplicate_custom_id", "custom_id"),
    ]
    assert client.batches.retrieve(batch.id).status == "failed"
    assert batch.output_file_id is None and batch.request_counts.completed == 0


async def test_list_walks_every_page(client: openai.OpenAI, tmp_path: Path) -> None:
    # Batches that fail validation cost no machine, so they make cheap list entries.
    bad = upload(client, write_lines(tmp_path / "bad.jsonl", [{"custom_id": "x"}]))
    made = [
        client.batches.create(input_file_id=bad.id, endpoint=CHAT, completion_window="24h").id
        for _ in range(5)
    ]
    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more is True
    assert [b.id for b in first.data] == made[::-1][:2]  # newest first
    walked = [b.id for b in client.batches.list(limit=2)]  # the SDK follows `after` itself
    assert walked[:5] == made[::-1] and len(walked) == len(set(walked))
    raw = client.batches.with_raw_response.list(limit=2).http_response.json()
    assert raw["object"] == "list" and raw["first_id"] == made[-1] and raw["last_id"] == made[-2]


async def test_cancel_a_running_batch(client: openai.OpenAI, tmp_path: Path) -> None:
    uploaded = upload(client, write_lines(tmp_path / "slow.jsonl", requests(1000)))
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"neobatch.template_name": SLOW_TEMPLATE},
    )

    def running() -> bool:
        current = client.batches.retrieve(batch.id)
        assert current.status not in DONE, current
        return current.status == "in_progress"

    await wait_until(running, 90, interval=0.1, message="slow batch in progress")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    ended = await finished(client, batch.id, timeout_seconds=90)
    assert ended.status == "cancelled" and ended.cancelled_at is not None
    assert ended.request_counts is not None and ended.request_counts.completed < 1000
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from the OpenAI SDK", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no python example under 'Use it from the OpenAI SDK'"
    return match.group(1)


def test_readme_example_runs_verbatim(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEOBATCH_CONSOLE_URL", stack.console_url)
    monkeypatch.setenv("NEOBATCH_API_KEY", stack.api_key)
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert printed.startswith("completed"), printed
    assert len([x for x in printed.splitlines() if x.startswith("q")]) == 3
