"""Pure rules, no servers: completion windows, the job view and its events, upload checks,
validation messages, and that these modules stay free of I/O."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from neobatch.console.catalog.rules import compare_versions, latest_version
from neobatch.console.errors import InvalidFile, TooLarge, describe_validation_error
from neobatch.console.files.uploads import checked_chunks
from neobatch.console.jobs.job_view import job_view
from neobatch.console.jobs.rules import supports_endpoint
from neobatch.console.jobs.window import parse_completion_window

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "seconds"),
    [
        ("24h", 86400),
        ("1d", 86400),
        ("1d2h", 93600),
        ("1h38min", 5880),
        ("72min", 4320),
        ("90s", 90),
        ("1m30s", 90),
        ("90m", 5400),
    ],
)
def test_completion_window_grammar(window: str, seconds: int) -> None:
    assert parse_completion_window(window) == seconds


@pytest.mark.parametrize(
    "window", ["", "0h", "2h1d", "24", "1w", "h", "31d", "1d 2h", "30s1m", "0s"]
)
def test_bad_completion_window_names_the_field(window: str) -> None:
    with pytest.raises(ValueError, match="completion_window"):
        parse_completion_window(window)


def test_template_without_endpoints_supports_what_the_engine_serves() -> None:
    assert supports_endpoint([], "/v1/embeddings")
    assert not supports_endpoint([], "/v1/images/generations")
    assert not supports_endpoint(["/v1/chat/completions"], "/v1/embeddings")


def job(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": "job_1",
        "batch_id": "batch_1",
        "status": "queued",
        "created_by": "key:owner",
        "created_at": T0,
        "queued_at": T0,
    }
    doc.update(fields)
    return doc


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_events_follow_timestamps_with_same_second_ties_in_lifecycle_order() -> None:
    view = job_view(
        job(
            status="cancelled",
            resource_preparing_at=at(5),
            # Same second: cancel_requested ranks before cancelling, cancelling before cancelled.
            cancelled_at=at(9.9),
            cancelling_at=at(9.5),
            cancel_requested_at=at(9.1),
        ),
        None,
        caller="key:owner",
    )
    assert [e.id for e in view.events] == [
        "queued",
        "resource_preparing",
        "cancel_requested",
        "cancelling",
        "cancelled",
    ]
    assert view.events[2].status == "cancelling"
    assert all(isinstance(e.at, int) for e in view.events)
    assert view.cancelled_at == int(at(9.9).timestamp())
    assert view.completed_at is None


def test_resource_failure_shows_precisely_with_the_error_and_no_generic_failed() -> None:
    view = job_view(
        job(
            status="resource_failed",
            resource_preparing_at=at(1),
            resource_failed_at=at(2),
            failed_at=at(2),
            error_message="no capacity for H100 (api_key=rp_abcdefgh12345)",
        ),
        None,
        caller="key:owner",
    )
    assert view.status == "resource_failed"
    events = {e.id: e for e in view.events}
    assert "failed" not in events
    assert events["resource_failed"].message.startswith("no capacity for H100")
    assert b"rp_abcdefgh12345" not in msgspec.json.encode(view)


def test_provision_endpoint_is_only_shown_to_the_owner() -> None:
    provision = {
        "_id": "prov_1",
        "provider": "runpod",
        "status": "failed",
        "endpoint": {"host": "1.2.3.4", "port": 22, "username": "root", "password": "hunter2"},
        "error_message": "pod never started",
        "created_at": T0,
        "updated_at": at(3),
    }
    doc = job(provision_id="prov_1")
    mine = msgspec.to_builtins(job_view(doc, provision, caller="key:owner"))
    assert mine["provision"]["endpoint"] == {"host": "1.2.3.4", "port": 22, "username": "root"}
    assert mine["provision"]["updated_at"] == int(at(3).timestamp())
    # The job has no error of its own, so the provision's explains it (AIBrix §1.6).
    assert mine["error_message"] == "pod never started"
    theirs = msgspec.to_builtins(job_view(doc, provision, caller="key:other"))
    assert theirs["provision"]["endpoint"] is None
    assert "hunter2" not in str(mine) + str(theirs)


class Reader:
    def __init__(self, data: bytes, chunk: int) -> None:
        self._data, self._chunk = data, chunk

    async def read(self, size: int = -1) -> bytes:
        n = min(self._chunk, size if size > 0 else self._chunk)
        out, self._data = self._data[:n], self._data[n:]
        return out


async def drain(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


async def test_first_line_split_across_chunks_is_checked_whole() -> None:
    data = b'\n{"custom_id": "a", "body": {}}\n[not checked]\n'
    assert await drain(checked_chunks(Reader(data, 3), 1000)) == data
    with pytest.raises(InvalidFile, match="line 1 is not valid JSON"):
        await drain(checked_chunks(Reader(b'{"custom_id": "a", \n', 3), 1000))
    with pytest.raises(TooLarge, match="upload limit"):
        await drain(checked_chunks(Reader(b'{"a":1}\n' * 10, 8), 40))


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        (
            "Object missing required field `data`",
            "invalid_json",
            "request body is empty; expected a JSON object",
        ),
        (
            "Object missing required field `uri` - at `$.data.spec.model_source`",
            "invalid_request",
            "spec.model_source.uri is required",
        ),
        (
            "Expected `object`, got `array` - at `$.data`",
            "invalid_request",
            "request body: Expected `object`, got `array`",
        ),
        (
            "Expected `str`, got `int` - at `$.data.serve_args[0]`",
            "invalid_request",
            "serve_args[0]: Expected `str`, got `int`",
        ),
    ],
)
def test_validation_errors_name_the_field(text: str, code: str, message: str) -> None:
    assert describe_validation_error(text) == (code, message)


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("v1.10.0", "v1.9.0", 1),  # numeric, not string order
        ("v2.0.0", "1.9.9", 1),  # the leading v is ignored
        ("v1.2", "v1.2.1", -1),  # a prefix sorts first
        ("v1.0.0", "1.0.0", 0),
        ("v1.0.0-rc1", "v1.0.0-rc2", -1),  # non-numeric segments as strings
    ],
)
def test_template_versions_follow_aibrix_order(a: str, b: str, order: int) -> None:
    assert compare_versions(a, b) == order
    assert compare_versions(b, a) == -order


def test_latest_version_wins_over_creation_order_and_ties_go_to_the_newest() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {"version": "v1.10.0", "created_at": t0, "_id": "a"},
        {"version": "v1.9.0", "created_at": t0 + timedelta(days=1), "_id": "b"},
        {"version": "v1.10.0", "created_at": t0 + timedelta(days=2), "_id": "c"},
    ]
    assert latest_version(rows)["_id"] == "c"  # type: ignore[index]
    assert latest_version([]) is None


@pytest.mark.parametrize("status", ["completed", "in_progress", "cancelled"])
def test_a_job_past_provisioning_shows_no_stale_placement_error(status: str) -> None:
    """issue 13 finding 9: a completed job showed the error of an earlier placement attempt
    (the provision keeps the message of a retried offer; a release retry writes one too)."""
    provision = {
        "_id": "prov_1",
        "provider": "runpod",
        "status": "released",
        "error_message": "offer gpu-1 had no capacity; trying the next",
    }
    view = job_view(job(status=status, provision_id="prov_1"), provision, caller="key:owner")
    assert view.error_message is None
    assert all("no capacity" not in (e.message or "") for e in view.events)
    # Its provision block still says what happened to the machine.
    assert view.provision is not None and "no capacity" in view.provision.error_message


@pytest.mark.parametrize("rule", ["cost_per_job", "price_per_hour"])
def test_the_job_view_says_which_rule_chose_its_offer(rule: str) -> None:
    """Issue 16: the placement the resource-manager records on the provision, as it writes it."""
    from neobatch.resource_manager.offers import Offer
    from neobatch.resource_manager.ranking import Estimate, choose

    offers = [
        Offer(
            provider="runpod",
            gpu_type=gpu,
            gpu_description=gpu,
            gpu_count=1,
            region="EU-1",
            price_per_hour=price,
        )
        for gpu, price in (("NVIDIA A100 80GB PCIe", 1.2), ("NVIDIA H100 80GB HBM3", 2.9))
    ]
    known = {"H100": 10300.0, "A100": 2400.0} if rule == "cost_per_job" else {}
    chosen = choose(offers, set(), Estimate(expected_output_tokens=10_000_000, declared=known))
    assert chosen is not None
    provision = {
        "_id": "prov_1",
        "provider": "runpod",
        "status": "running",
        "placement": msgspec.to_builtins(chosen[1]),
    }
    view = msgspec.to_builtins(job_view(job(provision_id="prov_1"), provision, caller="key:x"))
    placement = view["placement"]
    assert placement["rule"] == rule
    assert placement["expected_output_tokens"] == 10_000_000
    if rule == "cost_per_job":
        assert placement["gpu_family"] == "H100"
        assert placement["throughput_tokens_per_second"] == 10300.0
        assert placement["expected_cost_usd"] == pytest.approx(1.0236, abs=1e-3)
    else:
        assert placement["gpu_family"] == "A100"
        assert placement["expected_cost_usd"] is None
    # Before an offer is chosen (or on the ssh pool) there is none.
    assert job_view(job(), None, caller="key:x").placement is None
    assert job_view(job(), {"_id": "p", "placement": {"rule": 3}}, caller="key:x").placement is None
