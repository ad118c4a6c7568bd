"""Condition polling for tests: wait for a state instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout_seconds: float,
    interval: float = 0.05,
    message: str = "",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that value.

    Raises AssertionError with ``message`` (and the last value seen) on timeout. Exceptions from
    the predicate propagate: a broken probe should fail loudly, not look like "not yet".
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = message or getattr(predicate, "__name__", "condition")
            raise AssertionError(
                f"timed out after {timeout_seconds}s waiting for {detail} (last value: {value!r})"
            )
        await asyncio.sleep(interval)


def wait_for(predicate: Callable[[], Any], timeout_seconds: float, what: str = "") -> Any:
    """`wait_until` for synchronous tests: poll until truthy; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = what or getattr(predicate, "__name__", "condition")
            raise AssertionError(
                f"timed out after {timeout_seconds}s waiting for {detail}: {value!r}"
            )
        time.sleep(0.05)
