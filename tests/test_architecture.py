"""Layout rules that keep the code navigable (style-anchors "Where I/O may happen").

Pure modules — state machines, planning and offer rules, input validation — import
nothing that does I/O, so they can be tested in milliseconds and reasoned about alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PURE_MODULES = [
    "services/console/src/neobatch/console/job_create.py",
    "services/console/src/neobatch/console/jobs_view.py",
    "services/console/src/neobatch/console/catalog.py",
    "services/console/src/neobatch/console/uploads.py",
    "services/console/src/neobatch/console/openai_view.py",
    "services/console/src/neobatch/console/ratelimit.py",
    "services/planner/src/neobatch/planner/jobs.py",
    "services/planner/src/neobatch/planner/policy.py",
    "services/resource-manager/src/neobatch/resource_manager/provisions.py",
    "services/resource-manager/src/neobatch/resource_manager/offers.py",
    "services/runtime-agent/src/neobatch/runtime_agent/batch/batches.py",
    "services/runtime-agent/src/neobatch/runtime_agent/dispatch/concurrency.py",
    "services/runtime-agent/src/neobatch/runtime_agent/dispatch/policy.py",
    "services/runtime-agent/src/neobatch/runtime_agent/dispatch/tally.py",
    "services/runtime-agent/src/neobatch/runtime_agent/machine/errors.py",
    "services/runtime-agent/src/neobatch/runtime_agent/machine/launch.py",
    "libs/common/src/neobatch/common/batch_input.py",
]
IO_PACKAGES = {
    "pymongo",
    "gridfs",
    "faststream",
    "nats",
    "httpx",
    "aiohttp",
    "httptools",
    "asyncssh",
    "asyncio",
    "socket",
    "subprocess",
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_does_no_io(module: str) -> None:
    path = ROOT / module
    assert path.exists(), f"{module} moved: update this list"
    assert not imported_packages(path) & IO_PACKAGES


def test_no_service_uses_motor() -> None:
    offenders = [p for p in ROOT.glob("*/*/src/**/*.py") if "motor" in imported_packages(p)]
    assert offenders == []
