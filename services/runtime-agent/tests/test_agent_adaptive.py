"""Adaptive concurrency: the AIMD controller as a pure state machine, the job's `client` block
resolved over the agent's defaults, and dispatch_all following a limit that changes mid-run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from neobatch.common.batch_input import BatchRequest
from neobatch.common.contracts import ClientSpec, RetryPolicySpec
from neobatch.common.errors import ConfigError
from neobatch.runtime_agent.dispatch.concurrency import AimdController, FixedLimit, Outcome
from neobatch.runtime_agent.dispatch.policy import DispatchConfig, DispatchDefaults, RetryPolicy
from neobatch.runtime_agent.dispatch.pool import dispatch_all
from neobatch.runtime_agent.dispatch.tally import RequestResult
from neobatch.runtime_agent.settings import read_settings

OK = Outcome(200, 0.1)


def feed(controller: AimdController, outcome: Outcome, times: int) -> None:
    for _ in range(times):
        controller.record(outcome)


def test_starts_low_and_probes_by_a_quarter_until_the_maximum() -> None:
    c = AimdController(initial=8, maximum=64, healthy_window=8, additive_increase=1)
    assert c.limit == 8
    limits = []
    for _ in range(12):
        feed(c, OK, 8)
        limits.append(c.limit)
    # While probing each healthy window adds max(1, ceil(25% of the limit)); capped at 64.
    assert limits == [10, 13, 17, 22, 28, 35, 44, 55, 64, 64, 64, 64]
    feed(c, OK, 7)
    assert c.limit == 64


def test_growth_waits_for_a_full_healthy_window() -> None:
    c = AimdController(initial=4, maximum=100, healthy_window=5)
    feed(c, OK, 4)
    assert c.limit == 4
    c.record(OK)
    assert c.limit == 5


@pytest.mark.parametrize(
    "outcome",
    [Outcome(429, 0.01), Outcome(503, 0.01), Outcome(None, 1.0, timed_out=True), Outcome(504, 1)],
)
def test_capacity_errors_back_off_multiplicatively(outcome: Outcome) -> None:
    c = AimdController(initial=40, maximum=64)
    c.record(outcome)
    assert c.limit == 28 and not c.probing and c.decreases == 1


@pytest.mark.parametrize(
    "outcome", [Outcome(500, 0.01), Outcome(400, 0.01), Outcome(404, 0.01), Outcome(None, 0.01)]
)
def test_errors_that_are_not_overload_leave_the_limit(outcome: Outcome) -> None:
    c = AimdController(initial=40, maximum=64)
    feed(c, outcome, 50)
    assert c.limit == 40 and c.probing


def test_a_burst_of_errors_is_one_decrease_per_round_of_in_flight_requests() -> None:
    c = AimdController(initial=40, maximum=64)
    feed(c, Outcome(429, 0.01), 28)  # the requests that were in flight failing together
    assert c.limit == 28 and c.decreases == 1
    c.record(Outcome(429, 0.01))  # the 28th after the decrease: a new round, a new signal
    assert c.limit == 19 and c.decreases == 2
    feed(c, Outcome(429, 0.01), 200)
    # Sustained overload walks the limit down, never below 1.
    assert c.limit == 1
    c.record(Outcome(429, 0.01))
    assert c.limit == 1


def test_after_the_first_decrease_growth_is_additive() -> None:
    c = AimdController(initial=20, maximum=64, healthy_window=4, additive_increase=2)
    c.record(Outcome(503, 0.01))
    assert c.limit == 14
    feed(c, OK, 4)
    assert c.limit == 16  # +2, no longer +25%
    feed(c, OK, 8)
    assert c.limit == 20


def test_a_latency_spike_backs_off() -> None:
    c = AimdController(initial=32, maximum=32, healthy_window=1000)
    feed(c, Outcome(200, 0.1), 20)
    assert c.ewma == pytest.approx(0.1)
    c.record(Outcome(200, 0.17))  # below 1.75x the average: fine
    assert c.limit == 32
    c.record(Outcome(200, 0.5))
    assert c.limit == 25 and c.decreases == 1 and not c.probing


def test_latency_is_not_judged_before_enough_samples() -> None:
    c = AimdController(initial=16, maximum=16)
    feed(c, Outcome(200, 0.01), 3)
    c.record(Outcome(200, 5.0))
    assert c.limit == 16


def test_the_limit_never_exceeds_the_maximum_or_drops_below_one() -> None:
    c = AimdController(initial=100, maximum=3)
    assert c.limit == 3
    feed(c, OK, 100)
    assert c.limit == 3
    with pytest.raises(ValueError):
        AimdController(initial=1, maximum=0)


DEFAULTS = DispatchDefaults(
    concurrency=64,
    request_timeout_seconds=600,
    max_retries=5,
    base_delay_seconds=0.5,
    max_delay_seconds=5,
)


def test_no_client_block_means_the_agent_defaults() -> None:
    config = DispatchConfig.resolve(ClientSpec(), DEFAULTS)
    assert config.adaptive and config.max_concurrency == 64 and config.initial_concurrency == 8
    assert config.request_timeout_seconds == 600
    assert config.retry == RetryPolicy(max_retries=5, base_delay_seconds=0.5, max_delay_seconds=5)
    controller = config.controller()
    assert isinstance(controller, AimdController) and controller.limit == 8


def test_the_client_block_wins_field_by_field() -> None:
    client = ClientSpec(
        max_concurrency=200,
        request_timeout_seconds=7,
        adaptive_healthy_window=3,
        adaptive_additive_increase=4,
        retry_policy=RetryPolicySpec(max_retries=0, max_delay_seconds=2),
    )
    config = DispatchConfig.resolve(client, DEFAULTS)
    assert (config.max_concurrency, config.initial_concurrency) == (200, 8)
    assert config.request_timeout_seconds == 7
    # Presence-aware: 0 retries is a value, the unset base delay keeps the default.
    assert config.retry == RetryPolicy(max_retries=0, base_delay_seconds=0.5, max_delay_seconds=2)
    controller = config.controller()
    assert isinstance(controller, AimdController)
    assert (controller.healthy_window, controller.additive_increase) == (3, 4)


def test_non_adaptive_is_a_fixed_limit_at_the_maximum() -> None:
    config = DispatchConfig.resolve(
        ClientSpec(adaptive_concurrency=False, max_concurrency=12), DEFAULTS
    )
    controller = config.controller()
    assert isinstance(controller, FixedLimit) and controller.limit == controller.maximum == 12
    fixed = DispatchConfig.resolve(ClientSpec(adaptive_concurrency=False), DEFAULTS)
    assert fixed.controller().limit == 64


def test_max_factor_sets_the_ceiling_without_an_explicit_maximum() -> None:
    config = DispatchConfig.resolve(ClientSpec(adaptive_max_factor=2.5), DEFAULTS)
    assert config.max_concurrency == 20
    small = DispatchConfig.resolve(ClientSpec(max_concurrency=4), DEFAULTS)
    assert small.initial_concurrency == 4


# --- dispatch_all with a changing limit ----------------------------------------------------------


async def _requests(n: int) -> AsyncIterator[BatchRequest]:
    for i in range(n):
        yield BatchRequest(line_index=i, custom_id=f"r{i}", method="POST", url="/v1/x", body={})


class SteppedLimit:
    """A limit the test moves by hand."""

    def __init__(self, limit: int, maximum: int) -> None:
        self.limit, self.maximum = limit, maximum

    def record(self, outcome: Outcome) -> None:
        pass


async def test_dispatch_all_follows_the_limit_up_and_down() -> None:
    limit = SteppedLimit(2, maximum=16)
    in_flight = peak = 0
    gates: list[asyncio.Event] = []
    seen: list[int] = []

    async def send(request: BatchRequest) -> RequestResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        in_flight -= 1
        return RequestResult(line_index=request.line_index, custom_id=request.custom_id)

    async def record(result: RequestResult) -> None:
        seen.append(result.line_index)

    async def release(count: int) -> None:
        for gate in [g for g in gates if not g.is_set()][:count]:
            gate.set()
        for _ in range(5):
            await asyncio.sleep(0)

    task = asyncio.create_task(
        dispatch_all(_requests(60), send, record, controller=limit, should_stop=lambda: False)
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert in_flight == 2
    limit.limit = 10  # grown: new requests start as the next one finishes
    await release(1)
    assert in_flight == 10
    limit.limit = 3  # shrunk: nothing new starts until in-flight drops below 3
    await release(5)
    assert in_flight == 5
    await release(3)
    assert in_flight == 3
    while not task.done():
        await release(3)
        assert in_flight <= 3
    summary = await task
    assert summary.sent == 60 and sorted(seen) == list(range(60)) and peak == 10


async def test_dispatch_all_with_the_aimd_controller_ramps_up() -> None:
    controller = AimdController(initial=2, maximum=32, healthy_window=2)
    in_flight = peak = 0

    async def send(request: BatchRequest) -> RequestResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        assert in_flight <= controller.maximum
        await asyncio.sleep(0)
        controller.record(Outcome(200, 0.001))
        in_flight -= 1
        return RequestResult(line_index=request.line_index, custom_id=request.custom_id)

    async def record(result: RequestResult) -> None:
        pass

    summary = await dispatch_all(
        _requests(400), send, record, controller=controller, should_stop=lambda: False
    )
    assert summary.sent == 400 and controller.limit == 32 and 2 < peak <= 32


def test_settings_read_the_dispatch_defaults(tmp_path) -> None:
    key = tmp_path / "id_test"
    key.write_bytes(b"not parsed here")
    key.chmod(0o600)
    env = {
        "NEOBATCH_SSH_KEY_FILE": str(key),
        "NEOBATCH_DISPATCH_CONCURRENCY": "100",
        "NEOBATCH_REQUEST_TIMEOUT_SECONDS": "42",
        "NEOBATCH_REQUEST_MAX_RETRIES": "2",
        "NEOBATCH_REQUEST_RETRY_BASE_DELAY_SECONDS": "0.25",
        "NEOBATCH_REQUEST_RETRY_MAX_DELAY_SECONDS": "9",
        "NEOBATCH_ADAPTIVE_CONCURRENCY": "false",
        "NEOBATCH_ADAPTIVE_HEALTHY_WINDOW": "16",
        "NEOBATCH_ADAPTIVE_ADDITIVE_INCREASE": "3",
    }
    defaults = read_settings(env).dispatch
    assert defaults == DispatchDefaults(
        concurrency=100,
        request_timeout_seconds=42,
        max_retries=2,
        base_delay_seconds=0.25,
        max_delay_seconds=9,
        adaptive=False,
        healthy_window=16,
        additive_increase=3,
    )
    assert read_settings({"NEOBATCH_SSH_KEY_FILE": str(key)}).dispatch.adaptive
    with pytest.raises(ConfigError, match="NEOBATCH_ADAPTIVE_CONCURRENCY"):
        read_settings({**env, "NEOBATCH_ADAPTIVE_CONCURRENCY": "maybe"})
