"""`neobatch merge`'s pure part (issue 18): every custom_id of the original input once, in its
order, with the newest success of the retry chain, else its newest error, else `no_result`;
and `retry`'s body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from neobatch.cli.errors import CliError
from neobatch.cli.merge import ResultIndex, Where, chain_order, merged_lines, result_of
from neobatch.cli.retry import retry_body


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


def test_run_merge_refuses_to_overwrite(tmp_path: Any) -> None:
    from neobatch.cli.retry import run_merge
    from neobatch.cli.state import State

    target = tmp_path / "merged.jsonl"
    target.write_text("keep")
    with pytest.raises(CliError) as refused:
        run_merge(State(), "job_x", target, force=False)
    assert refused.value.code == "file_exists" and target.read_text() == "keep"
