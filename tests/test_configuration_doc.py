"""docs/configuration.md names every environment variable the services read, and who reads it.

Reads are found in the syntax tree of every module under services/*/src and libs/common/src,
in any of the forms the code uses or may come to use:
`env_str(env, "X", ...)` and any other call whose argument after `env`/`environ` is a name,
`env.get("X")`, `os.environ.get("X")`, `os.getenv("X")`, `os.environ["X"]`, `env["X"]`, and
constants such as `SSH_KEY_FILE_ENV = "X"` or tuples of names in a mapping of required
variables. A variable read in libs/common is read by every service.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")
ENV_HOLDERS = {"env", "environ", "environment"}


def _is_env(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ENV_HOLDERS
    return isinstance(node, ast.Attribute) and node.attr in ENV_HOLDERS


def _name(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if ENV_NAME.match(node.value):
            return node.value
    return None


def env_reads(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            args = node.args
            # helper(env, "X", ...): the name right after the environment argument
            for i, arg in enumerate(args[:-1]):
                if _is_env(arg) and (name := _name(args[i + 1])):
                    found.add(name)
            func = node.func
            # env.get("X"), os.environ.get("X"), os.getenv("X"), env.pop("X")
            if isinstance(func, ast.Attribute) and args and (name := _name(args[0])):
                if (func.attr in {"get", "pop", "setdefault"} and _is_env(func.value)) or (
                    func.attr == "getenv"
                ):
                    found.add(name)
        elif isinstance(node, ast.Subscript) and _is_env(node.value):
            if name := _name(node.slice):
                found.add(name)
        elif isinstance(node, ast.Assign):
            # SSH_KEY_FILE_ENV = "NEOBATCH_SSH_KEY_FILE"
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if any(t.endswith("_ENV") for t in targets) and (name := _name(node.value)):
                found.add(name)
        elif isinstance(node, ast.Dict):
            # {"runpod": ("RUNPOD_API_KEY", ...)}: the variables a provisioner requires
            for value in node.values:
                if isinstance(value, ast.Tuple) and value.elts:
                    names = [_name(e) for e in value.elts]
                    if all(names):
                        found.update(n for n in names if n)
    return found


def readers() -> dict[str, set[str]]:
    """Variable -> the services that read it ("all" for libs/common)."""
    result: dict[str, set[str]] = {}
    sources = [(p, p.parts[len(ROOT.parts) + 1]) for p in ROOT.glob("services/*/src/**/*.py")]
    sources += [(p, "all") for p in ROOT.glob("libs/common/src/**/*.py")]
    for path, service in sources:
        for name in env_reads(path):
            result.setdefault(name, set()).add(service)
    return result


def documented() -> dict[str, str]:
    """Variable -> its table row in docs/configuration.md."""
    rows: dict[str, str] = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\|\s*`([A-Z0-9_]+)`\s*\|", line)
        if match:
            rows[match.group(1)] = line
    return rows


def test_the_scanner_sees_every_form_of_env_read(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "A_ENV = 'NB_ONE'\n"
        "REQ = {'p': ('NB_TWO', 'NB_THREE')}\n"
        "def f(env):\n"
        "    env_str(env, 'NB_FOUR', '')\n"
        "    _number(env, 'NB_FIVE', 1)\n"
        "    env.get('NB_SIX')\n"
        "    os.environ.get('NB_SEVEN')\n"
        "    os.environ['NB_EIGHT']\n"
        "    os.getenv('NB_NINE')\n"
        "    env_int(\n        env,\n        'NB_TEN',\n        3,\n    )\n"
        "    other('NOT_ENV_READ')\n"
    )
    expected = {f"NB_{n}" for n in "ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN".split()}
    assert env_reads(sample) == expected


def test_every_variable_read_in_code_is_documented_with_its_services() -> None:
    read = readers()
    assert {"NATS_URL", "MONGO_URL", "NEOBATCH_HEALTH_PORT"} <= set(read)
    rows = documented()
    missing = sorted(set(read) - set(rows))
    assert not missing, f"add these to docs/configuration.md: {missing}"
    for name, services in sorted(read.items()):
        row = rows[name]
        absent = [s for s in services if s not in row]
        assert not absent, f"{name}: its row must name {absent} (read there)"


def test_documented_variables_exist_in_code() -> None:
    # A row for a variable nothing reads any more is stale; deploy-only ones are marked.
    read = readers()
    stale = [
        name for name, row in documented().items() if name not in read and "deploy only" not in row
    ]
    assert not stale, f"no code reads {stale}; remove them or mark the row 'deploy only'"
