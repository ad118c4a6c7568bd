import json
from pathlib import Path

import pytest

from neobatch.sim.devstack.sample_batch import sample_request, write_sample_batch


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writes_n_openai_batch_lines(tmp_path: Path) -> None:
    path = write_sample_batch(tmp_path / "in" / "batch.jsonl", 100, "sim-chat-1b")

    lines = _lines(path)
    assert len(lines) == 100
    assert [line["custom_id"] for line in lines] == [f"request-{i}" for i in range(1, 101)]
    first = lines[0]
    assert first["method"] == "POST"
    assert first["url"] == "/v1/chat/completions"
    assert first["body"]["model"] == "sim-chat-1b"
    assert first["body"]["messages"][0]["role"] == "user"
    assert first["body"]["messages"][0]["content"]
    assert first["body"]["max_tokens"] > 0


def test_same_index_gives_same_request() -> None:
    assert sample_request(7, "m") == sample_request(7, "m")
    assert sample_request(7, "m") != sample_request(8, "m")


def test_other_endpoints(tmp_path: Path) -> None:
    completions = _lines(write_sample_batch(tmp_path / "c.jsonl", 2, "m", "/v1/completions"))
    assert completions[0]["url"] == "/v1/completions"
    assert "prompt" in completions[0]["body"]
    embeddings = _lines(write_sample_batch(tmp_path / "e.jsonl", 2, "m", "/v1/embeddings"))
    assert embeddings[1]["body"]["input"]
    assert "max_tokens" not in embeddings[1]["body"]


def test_zero_requests_gives_empty_file(tmp_path: Path) -> None:
    assert write_sample_batch(tmp_path / "empty.jsonl", 0, "m").read_text() == ""


def test_rejects_unknown_endpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported endpoint"):
        write_sample_batch(tmp_path / "x.jsonl", 1, "m", "/v1/images")
