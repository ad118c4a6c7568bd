"""docs/configuration.md is what the settings declarations render, and nothing else reads the
environment.

Every variable a service reads is declared on a settings field (`neobatch.common.settings`)
and read by `read_env`; the doc's tables are generated from those declarations
(`./task docs:config`). The scan below looks at the syntax tree of every module under
services/*/src and libs/common/src for any other way in: `os.environ`, `os.getenv`, `environ`
imported from `os`, and reads of a mapping by a literal name (`env.get("X")`, `env["X"]`,
`helper(env, "X", ...)`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from neobatch.common.settings_doc import render, service_settings, variables

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")
ENV_HOLDERS = {"env", "environ", "environment"}
OS_ENV = {"environ", "environb", "getenv", "getenvb"}
# Modules allowed to touch the process environment, and why.
ALLOWED = {
    # The one generic reader: `read_env` defaults to `os.environ`.
    "libs/common/src/neobatch/common/settings.py",
    # The container HEALTHCHECK, a separate process: it reads the port variable named on its
    # command line (checked below to be a declared one).
    "libs/common/src/neobatch/common/healthcheck.py",
}


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
    """What in `path` reads the environment: variable names, or `os.environ`-like access."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in OS_ENV:
            found.add(f"os.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found.update(f"os.{a.name}" for a in node.names if a.name in OS_ENV)
        elif isinstance(node, ast.Call):
            args = node.args
            # helper(env, "X", ...): the name right after the environment argument
            for i, arg in enumerate(args[:-1]):
                if _is_env(arg) and (name := _name(args[i + 1])):
                    found.add(name)
            func = node.func
            # env.get("X"), env.pop("X")
            if isinstance(func, ast.Attribute) and args and (name := _name(args[0])):
                if func.attr in {"get", "pop", "setdefault"} and _is_env(func.value):
                    found.add(name)
        elif isinstance(node, ast.Subscript) and _is_env(node.value):
            if name := _name(node.slice):
                found.add(name)
    return found


def sources() -> list[Path]:
    return sorted([*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/common/src/**/*.py")])


def declared() -> set[str]:
    return {v.declared.name for cls in service_settings().values() for v in variables(cls)}


def test_the_scanner_sees_every_form_of_env_read(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\n"
        "from os import environ\n"
        "def f(env):\n"
        "    env_str(env, 'NB_FOUR', '')\n"
        "    _number(env, 'NB_FIVE', 1)\n"
        "    env.get('NB_SIX')\n"
        "    os.environ.get('NB_SEVEN')\n"
        "    os.getenv('NB_NINE')\n"
        "    env_int(\n        env,\n        'NB_TEN',\n        3,\n    )\n"
        "    env['NB_ELEVEN']\n"
        "    other('NOT_ENV_READ')\n"
    )
    expected = {"NB_FOUR", "NB_FIVE", "NB_SIX", "NB_SEVEN", "NB_TEN", "NB_ELEVEN"}
    assert env_reads(sample) == expected | {"os.environ", "os.getenv"}


def test_the_committed_doc_is_what_the_declarations_render() -> None:
    committed = DOC.read_text()
    assert committed == render(committed), (
        "docs/configuration.md differs from the settings declarations: run ./task docs:config"
    )


def test_no_environment_read_outside_the_declarations() -> None:
    assert len(sources()) > 20
    offenders = {}
    for path in sources():
        module = str(path.relative_to(ROOT))
        if module not in ALLOWED and (found := env_reads(path)):
            offenders[module] = sorted(found)
    assert not offenders, f"declare these on a settings field instead: {offenders}"


def test_the_healthcheck_reads_declared_ports() -> None:
    names = set(re.findall(r'"--port-env", "([A-Z_]+)"', _dockerfiles()))
    names |= set(re.findall(r'"--port-env", default="([A-Z_]+)"', _healthcheck()))
    assert names == {"NEOBATCH_CONSOLE_PORT", "NEOBATCH_HEALTH_PORT"}
    assert names <= declared()


def test_each_service_declares_the_common_connections() -> None:
    for cls in service_settings().values():
        assert {"NATS_URL", "MONGO_URL", "NEOBATCH_HEALTH_PORT"} <= {
            v.declared.name for v in variables(cls)
        }


def _dockerfiles() -> str:
    return "".join(p.read_text() for p in sorted((ROOT / "deploy" / "docker").glob("*")))


def _healthcheck() -> str:
    return (ROOT / "libs/common/src/neobatch/common/healthcheck.py").read_text()
