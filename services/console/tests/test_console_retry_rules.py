"""The pure rules of a retry (issue 18): which lines it re-runs, which jobs may be retried, what
it inherits, when an existing retry answers instead. No server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from neobatch.common.contracts import TERMINAL_JOB_STATUSES, JobStatus
from neobatch.common.errors import Conflict
from neobatch.console.jobs import retry_rules as rules
from neobatch.console.jobs.schemas import RetryJob


def line(custom_id: str) -> bytes:
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/x", "body": {}}
    ).encode()


def selected(lines: list[bytes], succeeded: set[str]) -> tuple[bytes, int]:
    selector = rules.LineSelector(succeeded)
    kept = [selector.feed(i, raw) for i, raw in enumerate(lines)]
    return b"".join(k for k in kept if k is not None), selector.selected


def test_failed_and_unfinished_lines_are_kept_as_they_were_in_order() -> None:
    bom = b"\xef\xbb\xbf" + line("a")
    crlf = line("c") + b"\r"
    spaced = b"  " + line("d") + b"\t"
    lines = [bom, line("b"), crlf, b"", spaced, b"   ", line("e")]
    # "b" succeeded; "a" and "e" failed (in the error file too); "c", "d" have no result.
    succeeded = rules.succeeded_ids(["b", "a", "e"], ["a", "e"])
    assert succeeded == {"b"}
    content, count = selected(lines, succeeded)
    assert content == bom + b"\n" + crlf + b"\n" + spaced + b"\n" + line("e") + b"\n"
    assert count == 4


def test_the_bom_is_read_on_the_first_line_only() -> None:
    assert rules.custom_id_of(b"\xef\xbb\xbf" + line("a"), 0) == "a"
    assert rules.custom_id_of(b"\xef\xbb\xbf" + line("a"), 1) is None
    # A line whose custom_id cannot be read has no result: it is kept.
    content, count = selected([b"{not json", line("x")], {"x"})
    assert (content, count) == (b"{not json\n", 1)


def test_everything_succeeded_selects_nothing() -> None:
    assert selected([line("a"), b"", line("b")], {"a", "b"}) == (b"", 0)


def job(status: str, **fields: Any) -> dict[str, Any]:
    return {"_id": "job_1", "status": status, **fields}


@pytest.mark.parametrize("status", list(JobStatus))
def test_only_a_terminal_job_can_be_retried(status: JobStatus) -> None:
    if status in TERMINAL_JOB_STATUSES:
        rules.check_retryable(job(status.value))
        return
    with pytest.raises(Conflict) as refused:
        rules.check_retryable(job(status.value))
    assert refused.value.code == "job_not_terminal"


def test_a_job_whose_input_was_refused_has_nothing_to_retry() -> None:
    for code in ("invalid_input_file", "empty_file"):
        with pytest.raises(Conflict) as refused:
            rules.check_retryable(job("failed", error_code=code))
        assert refused.value.code == "nothing_to_retry"
    rules.check_retryable(job("failed", error_code="engine_exited"))


ORIGINAL: dict[str, Any] = {
    "_id": "job_1",
    "status": "cancelled",
    "endpoint": "/v1/chat/completions",
    "completion_window": "2h",
    "name": "nightly",
    "model_id": "model-x",
    "model_template_name": "tpl",
    "model_template_version": "v1.2.0",
    "resource_request": {"replicas": 3, "provider_config": {"zone": "a"}},
    "client": {"max_concurrency": 4},
    "metadata": {"team": "search"},
    "provider": "runpod",
    "max_cost_usd": 9.0,
}


def test_a_retry_inherits_the_originals_choices() -> None:
    request = rules.retry_request(ORIGINAL, None, "file_new")
    assert request.input_dataset == "file_new" and request.endpoint == "/v1/chat/completions"
    assert (request.model_id, request.model_template_name, request.model_template_version) == (
        "model-x", "tpl", "v1.2.0",
    )  # fmt: skip
    assert request.resource_request is not None
    assert request.resource_request.replicas == 3
    assert request.resource_request.provider_config == {"zone": "a"}
    assert request.client is not None and request.client.max_concurrency == 4
    assert request.metadata == {"team": "search"} and request.provider == "runpod"
    assert request.completion_window == "2h" and request.max_cost_usd == 9.0
    assert request.name == "nightly" and not request.dry_run


def test_overrides_replace_template_replicas_and_cap() -> None:
    asked = RetryJob(model_template="other@v2", replicas=1, max_cost_usd=1.5)
    request = rules.retry_request(ORIGINAL, asked, "file_new")
    # Another template is found by name on any model, as a create finds it.
    assert (request.model_id, request.model_template_name, request.model_template_version) == (
        "", "other", "v2",
    )  # fmt: skip
    assert request.resource_request is not None and request.resource_request.replicas == 1
    assert request.max_cost_usd == 1.5
    latest = rules.retry_request(ORIGINAL, RetryJob(model_template="other"), "f")
    assert (latest.model_template_name, latest.model_template_version) == ("other", "")
    assert rules.overrides_of(RetryJob(replicas=2)) == {"replicas": 2}
    assert rules.overrides_of(None) == rules.overrides_of(RetryJob()) == {}


def test_a_running_retry_answers_an_equal_request_and_refuses_another() -> None:
    ended = {"_id": "job_r1", "status": "failed", "retry_overrides": {}}
    running = {"_id": "job_r2", "status": "in_progress", "retry_overrides": {"replicas": 2}}
    rules.check_siblings([ended], {})  # only ended ones: a new retry may be made
    with pytest.raises(rules.RetryExists) as exists:
        rules.check_siblings([ended, running], {"replicas": 2})
    assert exists.value.job is running
    with pytest.raises(Conflict) as refused:
        rules.check_siblings([ended, running], {})
    assert refused.value.code == "retry_in_progress"
    many = [dict(ended, _id=f"job_{i}") for i in range(rules.MAX_RETRIES_PER_JOB)]
    with pytest.raises(Conflict) as bounded:
        rules.check_siblings(many, {})
    assert bounded.value.code == "too_many_retries"


def test_an_idempotency_key_names_one_job_per_project() -> None:
    assert rules.retry_job_id("p", None) is None
    one = rules.retry_job_id("p", "k")
    assert one == rules.retry_job_id("p", "k") and one is not None and one.startswith("job_")
    assert one != rules.retry_job_id("q", "k") and one != rules.retry_job_id("p", "k2")
    made = {"_id": one, "retry_of": "job_1"}
    assert rules.check_replay(made, "job_1") is made
    with pytest.raises(Conflict) as reused:
        rules.check_replay(made, "job_2")
    assert reused.value.code == "idempotency_key_reused"
