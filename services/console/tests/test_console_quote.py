"""Issue 16: a quote before running (`dry_run`), a job's cost cap refused at create, and a
project's monthly budget. The quote arithmetic is a table; the routes run against the console."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from neobatch.common.costing import TokenTally
from neobatch.console.jobs.quote import (
    DEFAULT_THROUGHPUT_TOKENS_PER_SECOND,
    build_quote,
    candidates,
)

OUTBOX = "outbox"
SPEC = {"accelerator": {"type": "H100", "count": 1, "alternatives": ["A100"]}}


def offer_doc(gpu: str, price: float, *, provider: str = "ssh", count: int = 1) -> dict[str, Any]:
    return {
        "_id": f"{provider}:{gpu}@r1",
        "provider": provider,
        "gpu_type": gpu,
        "gpu_description": gpu,
        "family": gpu.split()[-1].upper() if " " in gpu else gpu.upper(),
        "gpu_count": count,
        "region": "r1",
        "price_per_hour": price,
        "available": True,
    }


def tally_of(*bodies: dict[str, Any]) -> TokenTally:
    tally = TokenTally()
    for body in bodies:
        tally.feed(msgspec.json.encode(body))
    return tally


def test_token_tally_counts_prompt_bytes_and_output_limits() -> None:
    tally = tally_of(
        {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 100},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 40}]}]},
        {"prompt": "z" * 8, "max_completion_tokens": 30, "max_tokens": 999},
    )
    assert (tally.requests, tally.prompt_tokens) == (3, 100 + 10 + 2)
    # Limits as given, 256 (the default) for the line without one.
    assert tally.output_tokens(256) == 100 + 256 + 30
    # A learned per-request figure also caps each limit: replies rarely reach max_tokens.
    assert tally.output_tokens(50, learned=True) == 50 + 50 + 30


def test_quote_prices_each_fitting_offer_by_throughput_and_startup() -> None:
    offers = [
        offer_doc("A100", 1.0),
        offer_doc("H100", 2.4),
        offer_doc("L4", 0.3),  # not a GPU the template runs on
        offer_doc("H100", 3.0, provider="lambdaCloud"),  # not a provider of the job
    ]
    template = {
        "_id": "tmpl_1",
        "name": "t",
        "version": "v1",
        "spec": {**SPEC, "placement": {"throughput": {"A100": 2400}, "startup_seconds": 60}},
    }
    quote = build_quote(
        template=template,
        providers=["ssh"],
        tally=tally_of(*[{"messages": [], "max_tokens": 1_000_000}] * 36),
        offers=offers,
        learned_throughput={"H100": 10_000.0},
        learned_tokens_per_request=None,
        max_cost_usd=None,
    )
    assert quote.output_tokens == 36_000_000 and quote.output_tokens_source == "default"
    by_family = {o.gpu_family: o for o in quote.offers}
    assert set(by_family) == {"H100", "A100"}
    h100, a100 = by_family["H100"], by_family["A100"]
    assert (h100.throughput_source, a100.throughput_source) == ("learned", "declared")
    assert h100.expected_seconds == pytest.approx(60 + 3600)
    assert h100.expected_cost_usd == pytest.approx(2.4 * 3660 / 3600)
    assert a100.expected_seconds == pytest.approx(60 + 15_000)
    # Cheapest first: the dearer-per-hour H100 is the cheaper job.
    assert quote.offers[0] is h100 and quote.expected_cost_usd == h100.expected_cost_usd


def test_a_quote_for_four_machines_shares_the_work_and_pays_each_start_up() -> None:
    template = {
        "spec": {**SPEC, "placement": {"throughput": {"H100": 1000}, "startup_seconds": 60}}
    }
    one, four = (
        build_quote(
            template=template,
            providers=["ssh"],
            tally=tally_of(*[{"messages": [], "max_tokens": 10_000}] * 36),
            offers=[offer_doc("H100", 3.6)],
            learned_throughput={},
            learned_tokens_per_request=None,
            max_cost_usd=None,
            machines=machines,
        )
        for machines in (1, 4)
    )
    assert (one.machines, four.machines) == (1, 4)
    # 360,000 tokens at 1,000/s: 360 s of work on one machine, 90 s each on four.
    assert one.offers[0].expected_seconds == pytest.approx(60 + 360)
    assert four.offers[0].expected_seconds == pytest.approx(60 + 90)
    # The same work, plus three more start-ups paid for.
    assert one.expected_cost_usd == pytest.approx(3.6 * 420 / 3600)
    assert four.expected_cost_usd == pytest.approx(3.6 * 4 * 150 / 3600)


def test_unknown_throughput_uses_the_documented_default_and_runpod_scales_by_count() -> None:
    spec = {"accelerator": {"type": "H100", "count": 2}}
    found = candidates([offer_doc("H100", 2.0, provider="runpod")], spec, ["runpod"])
    assert [(o["gpu_count"], o["price_per_hour"]) for o in found] == [(2, 4.0)]
    quote = build_quote(
        template={"spec": spec},
        providers=["runpod"],
        tally=tally_of({"prompt": "a"}),
        offers=[offer_doc("H100", 2.0, provider="runpod")],
        learned_throughput={},
        learned_tokens_per_request=None,
        max_cost_usd=None,
    )
    assert quote.offers[0].throughput_source == "default"
    assert quote.offers[0].throughput_tokens_per_second == DEFAULT_THROUGHPUT_TOKENS_PER_SECOND


# --- through the API --------------------------------------------------------------------------


async def _offers(api: Any) -> None:
    await api.db["offers"].insert_many([offer_doc("H100", 3.6), offer_doc("A100", 1.2)])


async def test_dry_run_answers_a_quote_and_stores_nothing(api: Any) -> None:
    await api.ready_template()
    await _offers(api)
    body = await api.job_request(dry_run=True)
    r = await api.post("/api/v1/jobs", body)
    assert r.status_code == 200, r.text
    quote = r.json()
    assert quote["object"] == "job.quote" and quote["requests"] == 2
    assert quote["providers"] == ["ssh"] and quote["prompt_tokens"] > 0
    # Two lines without max_tokens, nothing learned or declared: 256 each.
    assert quote["output_tokens"] == 512 and quote["output_tokens_source"] == "default"
    [h100] = quote["offers"]  # the template runs on H100 only
    assert h100["offer"] == "ssh:H100@r1" and h100["price_per_hour"] == 3.6
    assert h100["expected_seconds"] == pytest.approx(300 + 512 / 1000)
    assert quote["expected_cost_usd"] == pytest.approx(3.6 * (300 + 0.512) / 3600, abs=1e-6)
    assert await api.count("jobs") == 0 and await api.count(OUTBOX) == 0
    # Asking for two machines: each starts up and is paid for, the work is shared.
    two = await api.job_request(dry_run=True, resource_request={"replicas": 2})
    quote = (await api.post("/api/v1/jobs", two)).json()
    assert quote["machines"] == 2
    assert quote["offers"][0]["expected_seconds"] == pytest.approx(300 + 256 / 1000)
    assert quote["expected_cost_usd"] == pytest.approx(3.6 * 2 * 300.256 / 3600, abs=1e-6)


async def test_a_quote_over_the_cap_is_refused_with_the_quote(api: Any) -> None:
    await api.ready_template()
    await _offers(api)
    r = await api.post("/api/v1/jobs", await api.job_request(max_cost_usd=0.01))
    assert r.status_code == 422, r.text
    error = r.json()
    assert error["code"] == "quote_exceeds_max_cost"
    assert error["quote"]["expected_cost_usd"] > 0.01 and error["quote"]["max_cost_usd"] == 0.01
    assert await api.count("jobs") == 0 and await api.count(OUTBOX) == 0
    # Under its cap the job is created, with the cap stored for the planner.
    r = await api.post("/api/v1/jobs", await api.job_request(max_cost_usd=5))
    assert r.status_code == 200, r.text
    assert (await api.db["jobs"].find_one({"_id": r.json()["id"]}))["max_cost_usd"] == 5
    assert (await api.get(f"/api/v1/jobs/{r.json()['id']}")).json()["max_cost_usd"] == 5
    # The OpenAI route takes the cap in metadata; a cap that is not an amount is a 400.
    file_id = await api.uploaded_file()
    batch = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    named = {"neobatch.template_name": api.template_name}
    r = await api.post(
        "/v1/batches", {**batch, "metadata": {**named, "neobatch.max_cost_usd": "0.01"}}
    )
    assert r.status_code == 422 and r.json()["code"] == "quote_exceeds_max_cost", r.text
    r = await api.post(
        "/v1/batches", {**batch, "metadata": {**named, "neobatch.max_cost_usd": "lots"}}
    )
    assert r.status_code == 400 and "neobatch.max_cost_usd" in r.json()["message"], r.text


async def test_a_project_over_its_monthly_budget_gets_403_on_new_jobs(api: Any) -> None:
    await api.ready_template()
    r = await api.client.put(
        "/api/v1/projects/default/budget", json={"monthly_usd": 1.0}, headers=api.operator
    )
    assert r.status_code == 200, r.text
    assert r.json()["spent_usd"] == 0 and r.json()["over_budget"] is False
    r = await api.client.put(
        "/api/v1/projects/default/budget", json={"monthly_usd": 1.0}, headers=api.auth
    )
    assert r.status_code == 403 and r.json()["code"] == "operator_only"
    first = await api.post("/api/v1/jobs", await api.job_request())
    assert first.status_code == 200, first.text
    # Its machine ran 2 hours at $0.75/h: $1.50, over the $1 budget.
    now = datetime.now(UTC)
    await api.db["provisions"].insert_one(
        {
            "_id": "prov_x",
            "job_id": first.json()["id"],
            "provider": "runpod",
            "leased_at": now - timedelta(hours=2),
            "released_at": now - timedelta(seconds=1),
            "lease": {"provider": "runpod", "gpu_type": "H100", "price_per_hour": 0.75},
        }
    )
    r = await api.post("/api/v1/jobs", await api.job_request())
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "project_over_budget" and "monthly budget" in r.json()["message"]
    assert await api.count("jobs") == 1
    view = (await api.client.get("/api/v1/projects/default/budget", headers=api.operator)).json()
    assert view["over_budget"] is True and view["spent_usd"] == pytest.approx(1.5, abs=0.01)
    # Another project is not held by this one's budget; removing the budget lets jobs in again.
    _, other = await api.new_key("other")
    template = await api.job_request(input_dataset=await api.uploaded_file(headers=other))
    assert (await api.post("/api/v1/jobs", template, headers=other)).status_code == 200
    r = await api.client.put(
        "/api/v1/projects/default/budget", json={"monthly_usd": None}, headers=api.operator
    )
    assert r.status_code == 200 and r.json()["monthly_usd"] is None
    assert (await api.post("/api/v1/jobs", await api.job_request())).status_code == 200
