"""``docker``: what the runtime-agent uses (info, run -d, inspect, stop, rm, logs, ps, version).

Containers are JSON files in the machine's state directory; a container's process is the engine
simulator started in its own session, with the container's vLLM arguments.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from neobatch.sim.machine_tools.machine import record
from neobatch.sim.machine_tools.vllm import engine_argv, engine_env, vllm_options
from neobatch.sim.procs import is_running, stop_pid


def docker(cfg: dict[str, Any], args: list[str]) -> int:
    if not cfg["docker"]:
        print("sh: 1: docker: not found", file=sys.stderr)
        return 127
    record(cfg, "docker", ["docker", *args])
    if not args:
        print("Usage:  docker [OPTIONS] COMMAND", file=sys.stderr)
        return 1
    command, rest = args[0], args[1:]
    handler = _DOCKER_COMMANDS.get(command)
    if handler is None:
        print(f"docker: '{command}' is not a docker command (simulated).", file=sys.stderr)
        return 1
    return handler(Docker(cfg), rest)


class Docker:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.dir = Path(cfg["state"]) / "containers"

    def runtimes(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "io.containerd.runc.v2": {"path": "runc"},
            "runc": {"path": "runc"},
        }
        if self.cfg["nvidia"]:
            found["nvidia"] = {"path": "nvidia-container-runtime"}
        return dict(sorted(found.items()))

    def load(self, name: str) -> dict[str, Any] | None:
        name = name.lstrip("/")
        path = self.dir / f"{name}.json"
        if "/" in name or not path.exists():
            for other in self.dir.glob("*.json"):  # by id (or its prefix), as docker allows
                data = json.loads(other.read_text())
                if len(name) >= 12 and data["id"].startswith(name):
                    return data
            return None
        return dict(json.loads(path.read_text()))

    def save(self, data: dict[str, Any]) -> None:
        path = self.dir / f"{data['name']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)

    def view(self, data: dict[str, Any]) -> dict[str, Any]:
        running = is_running(int(data["pid"]))
        return {
            "Id": data["id"],
            "Name": "/" + data["name"],
            "Image": data["image"],
            "Args": data["args"],
            "State": {
                "Status": "running" if running else "exited",
                "Running": running,
                "Pid": int(data["pid"]) if running else 0,
            },
            "HostConfig": {"PortBindings": data["ports"]},
        }


def _render(template: str, obj: dict[str, Any]) -> str:
    """Enough of Go templates for ``{{.A.B}}`` and ``{{json .A}}``."""
    out, rest = [], template
    while "{{" in rest:
        before, _, tail = rest.partition("{{")
        expr, _, rest = tail.partition("}}")
        out.append(before)
        expr = expr.strip()
        as_json = expr.startswith("json ")
        value: Any = obj
        for part in expr.removeprefix("json ").strip().lstrip(".").split("."):
            if part:
                value = value.get(part) if isinstance(value, dict) else None
        if as_json:
            out.append(json.dumps(value))
        elif isinstance(value, bool):
            out.append("true" if value else "false")
        elif isinstance(value, dict | list):
            out.append(json.dumps(value))
        else:
            out.append("<no value>" if value is None else str(value))
    out.append(rest)
    return "".join(out)


def _format_option(args: list[str]) -> tuple[str | None, list[str]]:
    fmt, left, i = None, [], 0
    while i < len(args):
        if args[i] in ("--format", "-f") and i + 1 < len(args):
            fmt, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--format="):
            fmt = args[i].partition("=")[2]
        else:
            left.append(args[i])
        i += 1
    return fmt, left


def _info(d: Docker, args: list[str]) -> int:
    fmt, _ = _format_option(args)
    info = {"ServerVersion": "27.0.0-sim", "Runtimes": d.runtimes(), "DefaultRuntime": "runc"}
    if fmt:
        print(_render(fmt, info))
    else:
        print(f"Server Version: {info['ServerVersion']}")
        print("Runtimes: " + " ".join(info["Runtimes"]))
        print("Default Runtime: runc")
    return 0


# `docker run` options that take a value (anything else starting with - is a switch).
_RUN_VALUED = frozenset(
    {"--name", "--gpus", "--ipc", "-p", "--publish", "-e", "--env", "-v", "--volume",
     "--shm-size", "--entrypoint", "--runtime", "--network", "-u", "--user", "-w", "--workdir",
     "--restart", "--ulimit", "--label", "-l", "--env-file", "--cpus", "-m", "--memory"}
)  # fmt: skip


def _run(d: Docker, args: list[str]) -> int:
    opts, switches, rest = _run_options(args)
    if not rest:
        print('"docker run" requires at least 1 argument.', file=sys.stderr)
        return 125
    image, container_args = rest[0], rest[1:]
    if not switches & {"-d", "--detach"}:
        print("docker (simulated): only `docker run -d` is supported", file=sys.stderr)
        return 125
    name = (opts.get("--name") or [f"sim_{secrets.token_hex(4)}"])[0]
    if d.load(name) is not None:
        print(
            f'docker: Error response from daemon: Conflict. The container name "/{name}" is '
            "already in use.",
            file=sys.stderr,
        )
        return 125
    if (opts.get("--gpus") or opts.get("--runtime") == ["nvidia"]) and not d.cfg["nvidia"]:
        print(
            'docker: Error response from daemon: could not select device driver "" with '
            "capabilities: [[gpu]].",
            file=sys.stderr,
        )
        return 125
    vllm_args = _vllm_args(container_args)
    ports, host_port = _published(opts, vllm_options(vllm_args)[0].get("--port") or "8000")
    argv = engine_argv(d.cfg, host_port, vllm_args)
    if isinstance(argv, str):
        print(f"docker: container exited: {argv}", file=sys.stderr)
        return 125
    pid = _start_detached(argv, d.dir / f"{name}.log", engine_env(d.cfg))
    container_id = secrets.token_hex(32)
    d.save(
        {
            "id": container_id,
            "name": name,
            "image": image,
            "args": container_args,
            "pid": pid,
            "ports": ports,
            "created": time.time(),
        }
    )
    print(container_id)
    return 0


def _run_options(args: list[str]) -> tuple[dict[str, list[str]], set[str], list[str]]:
    """``docker run``'s options (valued, each kept in order), its switches, and what follows."""
    opts: dict[str, list[str]] = {}
    switches: set[str] = set()
    i = 0
    while i < len(args) and args[i].startswith("-"):
        name, eq, value = args[i].partition("=")
        if name in _RUN_VALUED:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            opts.setdefault(name, []).append(value)
        else:
            switches.add(name)
        i += 1
    return opts, switches, args[i:]


def _vllm_args(container_args: list[str]) -> list[str]:
    """The container's arguments as ``vllm serve`` takes them (the image's entrypoint is vLLM)."""
    if container_args[:2] == ["vllm", "serve"]:
        return container_args[2:]
    if container_args[:1] == ["serve"]:
        return container_args[1:]
    return container_args


def _published(opts: dict[str, list[str]], inner_port: str) -> tuple[dict[str, str], int]:
    """Every ``-p`` mapping by container port, and the host port of the engine's port (or 0)."""
    ports: dict[str, str] = {}
    host_port = 0
    for mapping in opts.get("-p", []) + opts.get("--publish", []):
        parts = mapping.split(":")
        inner = parts[-1].split("/")[0]
        outer = parts[-2] if len(parts) >= 2 else parts[-1]
        ports[inner] = mapping
        if inner == inner_port:
            host_port = int(outer)
    return ports, host_port


def _start_detached(argv: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Start the container's process in its own session, output to its log; return its pid."""
    with open(log_path, "ab") as log, open(os.devnull, "rb") as null:
        proc = subprocess.Popen(
            argv, stdin=null, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    return proc.pid


def _names(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith("-")]


def _no_such(kind: str, name: str) -> int:
    print(f"Error response from daemon: No such {kind}: {name}", file=sys.stderr)
    return 1


def _inspect(d: Docker, args: list[str]) -> int:
    fmt, rest = _format_option(args)
    views, status = [], 0
    for name in _names(rest):
        data = d.load(name)
        if data is None:
            print(f"Error: No such object: {name}", file=sys.stderr)
            status = 1
            continue
        views.append(d.view(data))
    if fmt:
        for view in views:
            print(_render(fmt, view))
    else:
        print(json.dumps(views, indent=4))
    return status


def _stop_one(data: dict[str, Any], grace: float) -> None:
    # After SIGKILL wait up to 10 s whatever the grace, as Docker does not return before it ends.
    stop_pid(int(data["pid"]), grace, kill_timeout_seconds=10)


def _stop(d: Docker, args: list[str]) -> int:
    grace, rest, i = 10.0, [], 0
    while i < len(args):
        if args[i] in ("-t", "--time", "--timeout") and i + 1 < len(args):
            grace, i = float(args[i + 1]), i + 2
            continue
        rest.append(args[i])
        i += 1
    status = 0
    for name in _names(rest):
        data = d.load(name)
        if data is None:
            status = _no_such("container", name)
            continue
        _stop_one(data, grace)
        print(name)
    return status


def _rm(d: Docker, args: list[str]) -> int:
    force = bool({"-f", "--force"} & set(args))
    status = 0
    for name in _names(args):
        data = d.load(name)
        if data is None:
            status = _no_such("container", name)
            continue
        if is_running(int(data["pid"])):
            if not force:
                print(
                    f'Error response from daemon: cannot remove container "/{name}": container '
                    "is running: stop the container before removing or force remove",
                    file=sys.stderr,
                )
                status = 1
                continue
            _stop_one(data, 0)
        for suffix in (".json", ".log"):
            with contextlib.suppress(FileNotFoundError):
                (d.dir / f"{data['name']}{suffix}").unlink()
        print(name)
    return status


def _logs(d: Docker, args: list[str]) -> int:
    tail: int | None = None
    rest, i = [], 0
    while i < len(args):
        if args[i] in ("--tail", "-n") and i + 1 < len(args):
            tail = None if args[i + 1] == "all" else int(args[i + 1])
            i += 2
            continue
        rest.append(args[i])
        i += 1
    names = _names(rest)
    data = d.load(names[0]) if names else None
    if data is None:
        return _no_such("container", names[0] if names else "")
    try:
        lines = (d.dir / f"{data['name']}.log").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines if tail is None else lines[-tail:] if tail > 0 else []:
        print(line)
    return 0


def _ps(d: Docker, args: list[str]) -> int:
    show_all = bool({"-a", "--all"} & set(args))
    fmt, _ = _format_option(args)
    rows = [d.view(json.loads(p.read_text())) for p in sorted(d.dir.glob("*.json"))]
    rows = [r for r in rows if show_all or r["State"]["Running"]]
    if fmt:
        for row in rows:
            print(_render(fmt.replace(".Names", ".Name").replace(".ID", ".Id"), row))
        return 0
    print("CONTAINER ID   IMAGE   STATUS   NAMES")
    for row in rows:
        print(f"{row['Id'][:12]}   {row['Image']}   {row['State']['Status']}   {row['Name'][1:]}")
    return 0


def _version(d: Docker, args: list[str]) -> int:
    print("Docker version 27.0.0-sim")
    return 0


_DOCKER_COMMANDS = {
    "info": _info,
    "run": _run,
    "inspect": _inspect,
    "stop": _stop,
    "rm": _rm,
    "logs": _logs,
    "ps": _ps,
    "version": _version,
    "--version": _version,
}
