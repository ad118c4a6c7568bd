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
    "services/console/src/neobatch/console/jobs/rules.py",
    "services/console/src/neobatch/console/jobs/window.py",
    "services/console/src/neobatch/console/jobs/job_view.py",
    "services/console/src/neobatch/console/jobs/batch_view.py",
    "services/console/src/neobatch/console/jobs/bill.py",
    "services/console/src/neobatch/console/jobs/quote.py",
    "services/console/src/neobatch/console/catalog/rules.py",
    "services/console/src/neobatch/console/catalog/access.py",
    "services/console/src/neobatch/console/files/uploads.py",
    "services/console/src/neobatch/console/keys/ratelimit.py",
    "services/console/src/neobatch/console/paging.py",
    "services/console/src/neobatch/console/wire.py",
    "services/planner/src/neobatch/planner/jobs.py",
    "services/planner/src/neobatch/planner/policy.py",
    "services/planner/src/neobatch/planner/decisions.py",
    "services/planner/src/neobatch/planner/fleet.py",
    "services/planner/src/neobatch/planner/machines.py",
    "services/planner/src/neobatch/planner/budget.py",
    "services/planner/src/neobatch/planner/job_doc.py",
    "services/resource-manager/src/neobatch/resource_manager/provisions.py",
    "services/resource-manager/src/neobatch/resource_manager/offers.py",
    "services/resource-manager/src/neobatch/resource_manager/ranking.py",
    "services/resource-manager/src/neobatch/resource_manager/providers/base.py",
    "services/runtime-agent/src/neobatch/runtime_agent/batch/batches.py",
    "services/runtime-agent/src/neobatch/runtime_agent/batch/chunks.py",
    "services/runtime-agent/src/neobatch/runtime_agent/batch/machines.py",
    "services/runtime-agent/src/neobatch/runtime_agent/dispatch/concurrency.py",
    "services/runtime-agent/src/neobatch/runtime_agent/dispatch/engine_load.py",
    "services/runtime-agent/src/neobatch/runtime_agent/dispatch/policy.py",
    "services/runtime-agent/src/neobatch/runtime_agent/dispatch/tally.py",
    "services/runtime-agent/src/neobatch/runtime_agent/dispatch/order.py",
    "services/runtime-agent/src/neobatch/runtime_agent/machine/engine_log.py",
    "services/runtime-agent/src/neobatch/runtime_agent/machine/errors.py",
    "services/runtime-agent/src/neobatch/runtime_agent/machine/launch.py",
    "libs/common/src/neobatch/common/batch_input.py",
    "libs/common/src/neobatch/common/billing.py",
    "libs/common/src/neobatch/common/webhooks.py",
    "services/notifier/src/neobatch/notifier/policy.py",
    "services/console/src/neobatch/console/webhooks/views.py",
    "libs/common/src/neobatch/common/costing.py",
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


def _module_file(name: str) -> Path | None:
    """The source file of a `neobatch.…` module in this repository, if it is one."""
    parts = name.split(".")
    for src in [*ROOT.glob("services/*/src"), *ROOT.glob("libs/*/src")]:
        base = src.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.exists():
                return candidate
    return None


def _neobatch_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from neobatch.x import y` may name a module `y` as well as an attribute.
            names.update([node.module, *(f"{node.module}.{a.name}" for a in node.names)])
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("neobatch.")}


@pytest.mark.parametrize("module", [m for m in PURE_MODULES if m.startswith("services/console/")])
def test_console_pure_module_reaches_no_io_through_its_imports(module: str) -> None:
    # The console's rules import its schemas and errors; none of those may pull in a store.
    seen: set[Path] = set()
    todo = [ROOT / module]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        assert not imported_packages(path) & IO_PACKAGES, f"{module} reaches I/O via {path}"
        todo.extend(f for name in _neobatch_imports(path) if (f := _module_file(name)))
