"""Fixtures the end-to-end modules share. Each module starts its own stack (fixture `stack`,
module scope, configured for what it tests); these build on whichever `stack` the module has."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from neobatch.sim.devstack import Stack
from neobatch.sim.devstack.scenario import ConsoleClient


@pytest.fixture(scope="module")
def console(stack: Stack) -> Iterator[ConsoleClient]:
    client = ConsoleClient.for_stack(stack)
    yield client
    client.close()


@pytest.fixture(scope="module")
def model_id(console: ConsoleClient) -> str:
    return console.ensure_model()
