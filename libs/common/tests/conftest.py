"""Fixtures the messaging tests share: a fresh namespace per test, and JetStream connections
with that namespace's stream in place (real nats-server from the `nats_url` fixture)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import nats
import pytest

from neobatch.common.broker import ensure_stream
from neobatch.common.subjects import Namespace

ConnectStream = Callable[[], Awaitable[nats.NATS]]


@pytest.fixture
def ns() -> Namespace:
    return Namespace(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def connect_stream(nats_url: str, ns: Namespace) -> ConnectStream:
    """A new connection each call (tests close it), the namespace's stream ensured."""

    async def connect() -> nats.NATS:
        nc = await nats.connect(nats_url)
        await ensure_stream(nc, ns)
        return nc

    return connect
