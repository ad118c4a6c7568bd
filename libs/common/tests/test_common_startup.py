"""Start-up steps retry what a restarting database or broker explains, and nothing else."""

from __future__ import annotations

import asyncio
import random
import time

import nats.errors
import nats.js.errors
import pytest
from pymongo.errors import AutoReconnect, DuplicateKeyError, ServerSelectionTimeoutError

from neobatch.common.errors import ConfigError
from neobatch.common.startup import MAX_DELAY_SECONDS, backoff_seconds, is_transient, retry_step


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (AutoReconnect("connection reset"), True),
        (ServerSelectionTimeoutError("no servers"), True),
        (nats.errors.NoServersError(), True),
        (nats.errors.ConnectionClosedError(), True),
        (nats.js.errors.ServiceUnavailableError(), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (DuplicateKeyError("E11000"), False),
        (nats.js.errors.BadRequestError(), False),
        (ConfigError("bad setting"), False),
        (ValueError("bug"), False),
    ],
)
def test_only_failures_a_restart_explains_are_retried(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_backoff_grows_then_caps_with_jitter() -> None:
    rng = random.Random(7)
    firsts = [backoff_seconds(1, rng) for _ in range(50)]
    lates = [backoff_seconds(30, rng) for _ in range(50)]
    assert all(0.1 <= d <= 0.2 for d in firsts)
    assert all(MAX_DELAY_SECONDS / 2 <= d <= MAX_DELAY_SECONDS for d in lates)
    assert len(set(lates)) > 1  # jittered: instances restarted together do not retry in step


async def test_a_step_that_fails_while_the_database_restarts_succeeds_later() -> None:
    attempts = 0
    undone = 0

    async def step() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise AutoReconnect("connection closed")

    async def undo() -> None:
        nonlocal undone
        undone += 1

    await retry_step("svc", "indexes", step, deadline=time.monotonic() + 30, undo=undo)
    assert attempts == 3
    assert undone == 2


async def test_a_permanent_failure_is_not_retried() -> None:
    attempts = 0

    async def step() -> None:
        nonlocal attempts
        attempts += 1
        raise ConfigError("NEOBATCH_X must be an integer")

    with pytest.raises(ConfigError):
        await retry_step("svc", "indexes", step, deadline=time.monotonic() + 30)
    assert attempts == 1


async def test_retrying_stops_at_the_deadline_with_the_last_error() -> None:
    async def step() -> None:
        raise nats.errors.NoServersError()

    started = time.monotonic()
    with pytest.raises(nats.errors.NoServersError):
        await retry_step("svc", "nats connect", step, deadline=started + 1.0)
    assert time.monotonic() - started <= 1.5


async def test_an_attempt_that_hangs_is_cut_off_and_tried_again() -> None:
    attempts = 0

    async def step() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.Event().wait()  # a connect that waits for the broker forever

    await retry_step(
        "svc", "nats connect", step, deadline=time.monotonic() + 30, attempt_seconds=0.2
    )
    assert attempts == 2
