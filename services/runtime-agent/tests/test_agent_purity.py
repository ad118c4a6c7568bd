"""Layout rules of the runtime-agent (style anchors, "Where I/O may happen"): pure modules import
nothing that does I/O, no two modules import each other (not even lazily), modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import neobatch.runtime_agent as package

ROOT = Path(package.__path__[0])
PACKAGE = "neobatch.runtime_agent"
PURE = [
    "batch/batches.py",
    "batch/chunks.py",
    "batch/machines.py",
    "dispatch/concurrency.py",
    "dispatch/engine_load.py",
    "dispatch/policy.py",
    "dispatch/pool.py",
    "dispatch/tally.py",
    "machine/engine_log.py",
    "machine/errors.py",
    "machine/launch.py",
]
FORBIDDEN = (
    "pymongo",
    "gridfs",
    "motor",
    "faststream",
    "nats",
    "aiohttp",
    "httptools",
    "httpx",
    "asyncssh",
)
MAX_LINES = 400


def _imports(tree: ast.AST) -> list[str]:
    """Modules imported anywhere in `tree` (in functions too), except under TYPE_CHECKING."""
    names: list[str] = []

    class Imports(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if getattr(node.test, "id", "") != "TYPE_CHECKING":
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            names.extend(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module:
                names.append(node.module)
                names.extend(f"{node.module}.{alias.name}" for alias in node.names)

    Imports().visit(tree)
    return names


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(ast.parse(path.read_text())):
            # Importing a.b.c runs a/__init__ and a/b/__init__ first.
            parts = imported.split(".")
            for end in range(len(parts), 2, -1):
                candidate = ".".join(parts[:end])
                # A module's own packages are initialised before it runs: not an edge.
                if candidate in modules and not (name + ".").startswith(candidate + "."):
                    targets.add(candidate)
        graph[name] = targets
    return graph


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io(module: str) -> None:
    source = (ROOT / module).read_text()
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    bad = [n for n in names if n.split(".")[0] in FORBIDDEN or n in {"time", "socket"}]
    assert bad == []
    assert "datetime.now" not in source and "utcnow()" not in source


def test_pure_modules_import_only_pure_modules_of_this_package() -> None:
    pure = {_module_name(ROOT / m) for m in PURE}
    graph = _import_graph()
    impure = {m: sorted(t - pure) for m, t in graph.items() if m in pure}
    assert {m: t for m, t in impure.items() if t} == {}


def test_no_import_cycles() -> None:
    graph = _import_graph()
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append([*path[path.index(name) :], name])
            return
        if name in done:
            return
        for target in sorted(graph.get(name, ())):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []


def test_modules_stay_small() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
