"""The command-line tools of a simulated GPU machine: ``vllm``, ``sudo`` and ``docker`` shims.

A simulated machine (a loopback SSH host, see ``cloud_sim``) gets a ``bin/`` directory first on
the ``PATH`` of its SSH sessions. ``install`` writes small Python scripts there (shebang =
``sys.executable``, so they can import this module); each runs ``shim_main(tool, config)``:

- ``vllm serve MODEL [--host H] [--port P] [--served-model-name N] [any other vLLM flag]``
  execs the engine simulator ``python -m neobatch.sim.engine --host 127.0.0.1 --port P
  --model N`` (unknown vLLM flags are accepted and ignored);
- ``sudo [-n] [-E] [-H] [-u USER] CMD ...`` runs CMD (our own tools in-process);
- ``docker`` understands what the runtime-agent uses: ``info [--format F]`` (``Runtimes``
  lists ``nvidia`` unless the machine lacks it), ``run -d --name N [--gpus all] [--ipc=host]
  -p 127.0.0.1:HOST:8000 IMAGE ARGS...`` (starts the engine simulator on HOST in the
  background, the container's vLLM arguments parsed as for ``vllm serve``), ``inspect
  [--format F] N``, ``stop [-t S] N``, ``rm [-f] N``, ``logs [--tail K] N``, ``ps [-a]``.
  Containers are remembered in the machine's state directory (``.sim/containers``).

Every ``vllm`` and ``docker`` call is recorded as a JSON line ``{"machine", "tool", "argv"}``
in the ``records`` file, so tests can assert the exact command the agent ran. A machine can
lack Docker (``sudo docker ...`` answers ``sudo: docker: command not found``) or the NVIDIA
runtime (``docker run --gpus`` fails as Docker does). ``kill_machine_processes`` ends every
engine a machine started, as deleting the machine would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

TOOLS = ("vllm", "sudo", "docker")
CONFIG = "machine.json"
_ENGINE_MODULE = "neobatch.sim.engine"


# --- machine side (the simulator) -------------------------------------------------------------


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
) -> Path:
    """Write the shims into ``<workdir>/bin`` and the machine's config; returns the bin dir.

    ``engine_args`` are extra engine-simulator flags for every engine this machine starts
    (e.g. ``["--latency-ms", "20"]``).
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
            }
        )
    )
    for tool in tools:
        shim = bin_dir / tool
        shim.write_text(
            f"#!{sys.executable}\n"
            "import sys\n"
            "from neobatch.sim.machine_tools import shim_main\n"
            f"sys.exit(shim_main({tool!r}, {str(config)!r}, sys.argv[1:]))\n"
        )
        shim.chmod(0o755)
    return bin_dir


def machine_env(workdir: str | os.PathLike[str]) -> dict[str, str]:
    """Environment for the machine's SSH sessions: its home, and its ``bin/`` first on PATH."""
    path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    return {"HOME": str(workdir), "PATH": f"{Path(workdir) / 'bin'}:{path}"}


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
        if _is_engine(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed += 1
    return killed


# --- shim side (a process on the machine) ----------------------------------------------------


def shim_main(tool: str, config_path: str, args: list[str]) -> int:
    cfg = json.loads(Path(config_path).read_text())
    if tool == "sudo":
        return _sudo(cfg, args)
    if tool == "vllm":
        return _vllm(cfg, args)
    if tool == "docker":
        return _docker(cfg, args)
    print(f"{tool}: not a simulated tool", file=sys.stderr)
    return 127


def _record(cfg: dict[str, Any], tool: str, argv: list[str]) -> None:
    line = json.dumps({"machine": cfg["machine"], "tool": tool, "argv": argv, "at": time.time()})
    fd = os.open(cfg["records"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _sudo(cfg: dict[str, Any], args: list[str]) -> int:
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] == "--":
            i += 1
            break
        i += 2 if args[i] in ("-u", "-g") else 1
    command = args[i:]
    if not command:
        print("usage: sudo [-n] command", file=sys.stderr)
        return 1
    name = command[0]
    if name == "docker" and not cfg["docker"]:
        print("sudo: docker: command not found", file=sys.stderr)
        return 1
    if name in cfg["tools"]:
        return shim_main(name, str(Path(cfg["state"]) / CONFIG), command[1:])
    try:
        os.execvp(name, command)
    except OSError:
        print(f"sudo: {name}: command not found", file=sys.stderr)
        return 1
    return 0  # not reached


# vLLM flags that take no value (everything else starting with -- is taken to take one).
_VLLM_SWITCHES = frozenset(
    {
        "--enforce-eager",
        "--trust-remote-code",
        "--disable-log-requests",
        "--disable-log-stats",
        "--enable-prefix-caching",
        "--enable-chunked-prefill",
        "--enable-lora",
        "--enable-auto-tool-choice",
        "--disable-custom-all-reduce",
    }
)


def _vllm_options(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--flag value`` / ``--flag=value`` pairs (first value kept) and the positionals."""
    options: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token.partition("=")
            if not eq and name not in _VLLM_SWITCHES and i + 1 < len(args):
                if not args[i + 1].startswith("--"):
                    value = args[i + 1]
                    i += 1
            options.setdefault(name, value)
        else:
            positional.append(token)
        i += 1
    return options, positional


def _engine_argv(cfg: dict[str, Any], port: int, vllm_args: list[str]) -> list[str] | str:
    """The engine simulator's command line for these vLLM arguments, or an error message."""
    options, positional = _vllm_options(vllm_args)
    model = options.get("--model") or (positional[0] if positional else "")
    served = options.get("--served-model-name") or model
    if not served:
        return "error: the model is required (vllm serve MODEL or --model MODEL)"
    return [
        cfg["python"], "-m", _ENGINE_MODULE, "--host", "127.0.0.1", "--port", str(port),
        "--model", served, *cfg.get("engine_args", []),
    ]  # fmt: skip


def _vllm(cfg: dict[str, Any], args: list[str]) -> int:
    _record(cfg, "vllm", ["vllm", *args])
    if args[:1] in (["--version"], ["-v"]):
        print("0.0.0+neobatch.sim")
        return 0
    if args[:1] != ["serve"]:
        print("usage: vllm serve MODEL [options]", file=sys.stderr)
        return 2
    options, _ = _vllm_options(args[1:])
    try:
        port = int(options.get("--port") or 8000)
    except ValueError:
        print(f"error: invalid --port {options['--port']!r}", file=sys.stderr)
        return 2
    argv = _engine_argv(cfg, port, args[1:])
    if isinstance(argv, str):
        print(argv, file=sys.stderr)
        return 2
    # Remembered so deleting the machine ends it; pid = the engine's after exec.
    (Path(cfg["state"]) / "procs" / str(os.getpid())).touch()
    sys.stdout.flush()
    os.execv(argv[0], argv)
    return 0  # not reached


# --- docker ------------------------------------------------------------------------------------


def _docker(cfg: dict[str, Any], args: list[str]) -> int:
    if not cfg["docker"]:
        print("sh: 1: docker: not found", file=sys.stderr)
        return 127
    _record(cfg, "docker", ["docker", *args])
    if not args:
        print("Usage:  docker [OPTIONS] COMMAND", file=sys.stderr)
        return 1
    command, rest = args[0], args[1:]
    handler = _DOCKER_COMMANDS.get(command)
    if handler is None:
        print(f"docker: '{command}' is not a docker command (simulated).", file=sys.stderr)
        return 1
    return handler(Docker(cfg), rest)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _is_engine(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return _ENGINE_MODULE.encode() in cmdline and _alive(pid)


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


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
        running = _alive(int(data["pid"]))
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
    if i >= len(args):
        print('"docker run" requires at least 1 argument.', file=sys.stderr)
        return 125
    image, container_args = args[i], args[i + 1 :]
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
    vllm_args = container_args
    if vllm_args[:2] == ["vllm", "serve"]:
        vllm_args = vllm_args[2:]
    elif vllm_args[:1] == ["serve"]:
        vllm_args = vllm_args[1:]
    options, _ = _vllm_options(vllm_args)
    inner_port = options.get("--port") or "8000"
    ports: dict[str, str] = {}
    host_port = 0
    for mapping in opts.get("-p", []) + opts.get("--publish", []):
        parts = mapping.split(":")
        inner = parts[-1].split("/")[0]
        outer = parts[-2] if len(parts) >= 2 else parts[-1]
        ports[inner] = mapping
        if inner == inner_port:
            host_port = int(outer)
    argv = _engine_argv(d.cfg, host_port, vllm_args)
    if isinstance(argv, str):
        print(f"docker: container exited: {argv}", file=sys.stderr)
        return 125
    log_path = d.dir / f"{name}.log"
    with open(log_path, "ab") as log, open(os.devnull, "rb") as null:
        import subprocess

        proc = subprocess.Popen(
            argv, stdin=null, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    container_id = secrets.token_hex(32)
    d.save(
        {
            "id": container_id,
            "name": name,
            "image": image,
            "args": container_args,
            "pid": proc.pid,
            "ports": ports,
            "created": time.time(),
        }
    )
    print(container_id)
    return 0


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
    pid = int(data["pid"])
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        if not _wait_gone(pid, grace):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, 10)


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
        if _alive(int(data["pid"])):
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
