"""Pure modules import nothing that does I/O (style anchors, "Where I/O may happen")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import neobatch.runtime_agent as package

PURE = ["batches.py", "dispatch.py"]
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


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io(module: str) -> None:
    source = Path(package.__path__[0], module).read_text()
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    bad = [n for n in names if n.split(".")[0] in FORBIDDEN or n in {"time", "socket"}]
    assert bad == []
    assert "datetime.now" not in source and "utcnow()" not in source
