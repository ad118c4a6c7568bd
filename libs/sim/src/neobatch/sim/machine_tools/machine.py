"""The machine side: install a machine's tools, its sessions' environment, its records, its end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from neobatch.sim.procs import cmdline, is_running

TOOLS = ("vllm", "sudo", "docker")
CONFIG = "machine.json"
ENGINE_MODULE = "neobatch.sim.engine"
# What a machine with ``real_engine_python`` runs for ``vllm serve`` (see ``vllm.py``).
REAL_ENGINE_MODULE = "vllm.entrypoints.openai.api_server"


def state_dir(workdir: str | os.PathLike[str]) -> Path:
    return Path(workdir) / ".sim"


def install(
    workdir: str | os.PathLike[str],
    *,
    machine: str,
    tools: Iterable[str] = TOOLS,
    records: str | os.PathLike[str] | None = None,
    docker: bool = True,
    nvidia: bool = True,
    engine_args: Sequence[str] = (),
    real_engine_python: str | os.PathLike[str] | None = None,
    address: str = "127.0.0.1",
) -> Path:
    """Write the shims into ``<workdir>/bin`` and the machine's config; returns the bin dir.

    ``engine_args`` are extra engine-simulator flags for every engine this machine starts
    (e.g. ``["--latency-ms", "20"]``). ``real_engine_python``: the python of a vLLM CPU venv
    (``neobatch.sim.real_engine``); then ``vllm serve`` and ``docker run`` start the real
    server with the arguments they were given instead of the simulator.
    """
    bin_dir = Path(workdir) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    state = state_dir(workdir)
    (state / "containers").mkdir(parents=True, exist_ok=True)
    (state / "procs").mkdir(parents=True, exist_ok=True)
    config = state / CONFIG
    tools = [t for t in tools if t in TOOLS]
    config.write_text(
        json.dumps(
            {
                "machine": machine,
                "python": sys.executable,
                "bin": str(bin_dir),
                "state": str(state),
                "tools": tools,
                "records": str(records or state / "commands.jsonl"),
                "docker": docker,
                "nvidia": nvidia,
                "engine_args": list(engine_args),
                "real_engine_python": str(real_engine_python) if real_engine_python else "",
                "real_engine_cache": real_engine_cache() if real_engine_python else "",
                # Where this machine's engines listen (its own loopback address).
                "address": address,
            }
        )
    )
    for tool in tools:
        shim = bin_dir / tool
        shim.write_text(
            f"#!{sys.executable}\n"
            "import sys\n"
            "from neobatch.sim.machine_tools.shims import shim_main\n"
            f"sys.exit(shim_main({tool!r}, {str(config)!r}, sys.argv[1:]))\n"
        )
        shim.chmod(0o755)
    return bin_dir


def real_engine_cache() -> str:
    """Where the machines' real engines keep vLLM's cache (``VLLM_CACHE_ROOT``): the one of
    the user running the simulator (``$VLLM_CACHE_ROOT``, else ``~/.cache/vllm``), as a
    machine image with vLLM run once has it. A machine's own home is new with every machine:
    there vLLM 0.32 inspected the model class in a subprocess of its own before starting
    (25 s and more on two busy cores, measured) at every start, which neither ``run_batch``
    nor the bench's direct engine (both under the user's home) pays."""
    return os.environ.get("VLLM_CACHE_ROOT") or str(Path.home() / ".cache" / "vllm")


# An engine simulator started on a simulated machine listens on this address when told to
# listen on loopback (a template's own launch command says 127.0.0.1).
ADDRESS_ENV = "NEOBATCH_SIM_MACHINE_ADDRESS"


def machine_env(workdir: str | os.PathLike[str], address: str = "") -> dict[str, str]:
    """Environment for the machine's SSH sessions: its home, its ``bin/`` first on PATH, and
    its own loopback address (if it has one)."""
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env = {"HOME": str(workdir), "PATH": f"{Path(workdir) / 'bin'}:{path}"}
    if address:
        # A cloud machine: its engine simulators listen on its address and die with it.
        env[ADDRESS_ENV] = address
        env["NEOBATCH_SIM_MACHINE_HOME"] = str(workdir)
    return env


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def kill_machine_processes(workdir: str | os.PathLike[str]) -> int:
    """SIGKILL every engine the machine's tools started (containers and ``vllm serve``)."""
    state = state_dir(workdir)
    pids: list[int] = []
    for entry in (state / "procs").glob("*"):
        if entry.name.isdigit():
            pids.append(int(entry.name))
    for entry in (state / "containers").glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(json.loads(entry.read_text())["pid"]))
    killed = 0
    for pid in pids:
        if is_engine(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed += 1
    return killed


def record(cfg: dict[str, Any], tool: str, argv: list[str]) -> None:
    line = json.dumps({"machine": cfg["machine"], "tool": tool, "argv": argv, "at": time.time()})
    fd = os.open(cfg["records"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def is_engine(pid: int) -> bool:
    """Whether pid runs an engine, simulated or real (so a recycled pid is never killed)."""
    argv = cmdline(pid)
    if argv is None or not is_running(pid):
        return False
    return any(ENGINE_MODULE in part or REAL_ENGINE_MODULE in part for part in argv)
