"""Start-up steps that outlive a restarting database or broker.

A service starts while MongoDB or nats-server may be restarting (a rolling upgrade, a node
failover, the chaos test). Each start-up step (indexes, the stream, the dead-letter
forwarder, the consumers) is retried with capped, jittered exponential backoff until a
deadline, so a dependency that comes back in time never kills the service; past the deadline
the last error escapes and the process ends with it (DESIGN rule 4: every wait has a deadline).
Only failures that a restart explains are retried: a bad configuration or a refused request
fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from pymongo.errors import ConnectionFailure, PyMongoError

from neobatch.common.logs import log_fields

log = logging.getLogger("neobatch.startup")

# First pause and cap of the backoff between attempts.
FIRST_DELAY_SECONDS = 0.2
MAX_DELAY_SECONDS = 5.0
# One attempt's bound: nats-py's first connect, told to reconnect forever, would otherwise
# wait for the broker with no deadline at all.
ATTEMPT_SECONDS = 10.0

Step = Callable[[], Awaitable[object]]


def is_transient(error: BaseException) -> bool:
    """Would this failure go away once the database or broker is back?"""
    if isinstance(error, ConnectionFailure):  # AutoReconnect, NotPrimary, server selection
        return True
    if isinstance(error, PyMongoError):
        return error.has_error_label("RetryableWriteError") or error.has_error_label(
            "TransientTransactionError"
        )
    if isinstance(error, nats.js.errors.APIError):
        # JetStream answers 503 while its meta leader is elected after a restart; any other
        # API error (a bad stream config, say) is ours to fix, not to wait out.
        return isinstance(
            error, nats.js.errors.ServiceUnavailableError | nats.js.errors.ServerError
        )
    return isinstance(error, nats.errors.Error | OSError | asyncio.TimeoutError)


def backoff_seconds(attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff: attempt 1 waits up to 0.2 s, then 0.4, 0.8 … 5 s."""
    ceiling = min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2 ** (attempt - 1))
    return rng.uniform(ceiling / 2, ceiling)


async def retry_step(
    service: str,
    name: str,
    step: Step,
    *,
    deadline: float,
    undo: Step | None = None,
    rng: random.Random | None = None,
    attempt_seconds: float = ATTEMPT_SECONDS,
) -> None:
    """Run `step` until it succeeds, retrying transient failures until `deadline` (monotonic).

    `undo` resets what a failed attempt may have half done (the broker's partial start)
    before the next one.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        attempt += 1
        try:
            await asyncio.wait_for(step(), attempt_seconds)
            return
        except Exception as error:
            if undo is not None:
                await _undo(service, name, undo)
            pause = backoff_seconds(attempt, rng)
            if not is_transient(error) or time.monotonic() + pause > deadline:
                raise
            log.warning(
                "start-up step failed; retrying",
                extra=log_fields(
                    service=service,
                    step=name,
                    attempt=attempt,
                    retry_in_seconds=round(pause, 2),
                    error=type(error).__name__,
                ),
            )
            await asyncio.sleep(pause)


async def _undo(service: str, name: str, undo: Step) -> None:
    try:
        await asyncio.wait_for(undo(), timeout=MAX_DELAY_SECONDS)
    except Exception:
        log.warning(
            "could not reset a failed start-up step",
            exc_info=True,
            extra=log_fields(service=service, step=name),
        )
