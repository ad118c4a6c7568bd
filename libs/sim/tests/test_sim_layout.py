"""The shape of libs/sim: small modules by role, and pytest only in the plugin."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "neobatch" / "sim"
MAX_LINES = 400
# A module may pass MAX_LINES only if its docstring says why, with this phrase.
LONG_BECAUSE = "Long because"


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_module_is_long_without_a_reason() -> None:
    long = []
    for path in _modules():
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if text.count("\n") > MAX_LINES and LONG_BECAUSE not in docstring:
            long.append(f"{path.relative_to(SRC)}: {text.count(chr(10))} lines")
    assert long == []


def test_only_the_plugin_imports_pytest() -> None:
    # The local stack, the benches and the simulators run without pytest (./task up, CI images).
    importers = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] in ("pytest", "pytest_asyncio") for name in names):
                importers.append(str(path.relative_to(SRC)))
    assert sorted(set(importers)) == ["pytest_plugin.py"]
