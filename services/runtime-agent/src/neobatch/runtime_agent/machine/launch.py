"""How a batch's engine runs on its machine, as shell scripts. Pure: builds text, runs nothing.

Every remote command is a script built here with each interpolated value shell-quoted
(DESIGN rule 6); batch ids are additionally checked against a strict pattern because they
name a directory. The engine runs in its own session and process group, detached from the
SSH session, so it outlives a dropped connection, a relaunch finds it through its pid file,
and stopping it reaches every worker process it forked.

Runtime targets (the batch's `runtime`, the provider that leased the machine) decide how the
engine runs; `plan_launch` picks one of two launch modes:

- a process (pid file + setsid): the template's own `engine.command` on every runtime (it wins
  everywhere: that is how the engine simulator runs in tests and the local stack), otherwise
  `vllm serve <model_source.uri> --host 127.0.0.1 --port <engine.port> ...` on `runpod` and `ssh`;
- a container on `lambdaCloud`: `sudo docker run -d --name neobatch-<batch_id> --gpus all
  --ipc=host -p 127.0.0.1:<engine.port>:8000 <engine.image> --model ... --port 8000`, after
  checking that Docker answers and has the NVIDIA runtime (`engine_launch_failed` otherwise).

Either way the engine is only reachable on the machine's loopback, through our port-forward.
`start_command`, `status_command`, `stop_command` and `log_command` pick the script of either
mode, `cleanup_command` removes the batch's work directory after the stop (SSH-pool machines
are reused: without it every batch left its directory behind); `remote.RemoteHost` runs them.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from neobatch.common.contracts import EngineSpec
from neobatch.runtime_agent.machine.errors import EngineLaunchFailed, EngineStartFailed

WORK_ROOT = "/tmp/neobatch"
COMMAND_TIMEOUT_SECONDS = 30.0
# Lambda: the image when the template names none, and the port vLLM listens on inside it.
DEFAULT_IMAGE = "vllm/vllm-openai:latest"
CONTAINER_PORT = 8000
RUNTIMES = ("ssh", "runpod", "lambdaCloud")
# What `docker run` may spend pulling an image, whatever the engine's ready timeout says.
MIN_PULL_SECONDS = 600.0
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def workdir(batch_id: str) -> str:
    if not _SAFE_ID.match(batch_id):
        raise ValueError(f"unsafe batch id for a remote path: {batch_id!r}")
    return f"{WORK_ROOT}/{batch_id}"


def _flag(key: str) -> str:
    return key if key.startswith("-") else "--" + key.replace("_", "-")


# Added to every vLLM launch unless the template says either way itself (the flag, `=value`,
# its `--no-` form, or the `engine_args` key, false included): prefix caching, and each
# response's `usage.prompt_tokens_details.cached_tokens`, which the batch's usage sums; no
# uvicorn access log, whose line per request cost the engine's API server CPU at every
# request and buried the engine's own error lines in its log (request logging itself is off
# by default since vLLM 0.10: `--enable-log-requests`; 0.32 has no `--disable-log-requests`).
DEFAULT_VLLM_SWITCHES = (
    "--enable-prefix-caching",
    "--enable-prompt-tokens-details",
    "--disable-uvicorn-access-log",
)


def _says(argv: list[str], engine: EngineSpec, flag: str) -> bool:
    names = {flag, "--no-" + flag.removeprefix("--")}
    return any(word.partition("=")[0] in names for word in argv) or any(
        _flag(key) in names for key in engine.engine_args
    )


def vllm_options(engine: EngineSpec) -> list[str]:
    """`serve_args`, then `engine_args` as `--flags`, then parallelism sizes above 1, then the
    `DEFAULT_VLLM_SWITCHES` the template did not set."""
    argv = list(engine.serve_args)
    for key, value in engine.engine_args.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(_flag(key))
        elif isinstance(value, list | tuple):
            argv += [_flag(key), *(str(v) for v in value)]
        elif isinstance(value, dict):
            argv += [_flag(key), json.dumps(value, separators=(",", ":"))]
        else:
            argv += [_flag(key), str(value)]
    for short, flag in _PARALLEL_FLAGS:
        size = engine.parallelism.get(short)
        if isinstance(size, int) and size > 1 and flag not in argv:
            argv += [flag, str(size)]
    argv += [flag for flag in DEFAULT_VLLM_SWITCHES if not _says(argv, engine, flag)]
    return argv


_PARALLEL_FLAGS = (
    ("tp", "--tensor-parallel-size"),
    ("pp", "--pipeline-parallel-size"),
    ("dp", "--data-parallel-size"),
)


def _require_vllm(engine: EngineSpec) -> None:
    if engine.engine_type != "vllm":
        raise EngineStartFailed(
            f"engine_type {engine.engine_type!r} needs a template command; only vllm has a "
            "built-in launch",
            code="engine_unsupported",
        )


def engine_argv(engine: EngineSpec) -> list[str]:
    """The engine's command line as a process on the machine, before quoting.

    A template's own `command` wins (`{port}`/`{model}` substituted per argument). Otherwise
    `vllm serve`, bound to loopback: the engine is only ever reached through our port-forward.
    """
    port, model = str(engine.port), engine.serving_name
    if engine.command:
        return [arg.replace("{port}", port).replace("{model}", model) for arg in engine.command]
    _require_vllm(engine)
    head = ["vllm", "serve", engine.model_uri, "--host", "127.0.0.1", "--port", port]
    return [*head, "--served-model-name", model, *vllm_options(engine)]


def container_name(batch_id: str) -> str:
    workdir(batch_id)  # the same strict check: the name is interpolated into commands
    return f"neobatch-{batch_id}"


@dataclass(frozen=True)
class EngineLaunch:
    """How one batch's engine runs on its machine.

    `image` None: a detached process, `argv` its command line (pid file in the batch's workdir).
    `image` set: a Docker container named `container`, `argv` the arguments after the image,
    its port 8000 published on the machine's loopback at `port`.
    """

    batch_id: str
    argv: list[str]
    port: int
    image: str | None = None
    # How long the launch command may take (a first `docker run` pulls the image).
    launch_timeout_seconds: float = COMMAND_TIMEOUT_SECONDS

    @property
    def in_docker(self) -> bool:
        return self.image is not None

    @property
    def container(self) -> str:
        return container_name(self.batch_id)


def plan_launch(runtime: str, batch_id: str, engine: EngineSpec) -> EngineLaunch:
    """Pick the launch for a runtime target (see the module docstring); pure."""
    workdir(batch_id)
    if runtime not in RUNTIMES:
        raise EngineLaunchFailed(f"unknown runtime target {runtime!r}; expected one of {RUNTIMES}")
    if engine.command or runtime != "lambdaCloud":
        return _checked(EngineLaunch(batch_id, engine_argv(engine), engine.port), engine)
    _require_vllm(engine)
    argv = ["--model", engine.model_uri, "--served-model-name", engine.serving_name]
    argv += ["--host", "0.0.0.0", "--port", str(CONTAINER_PORT), *vllm_options(engine)]
    pull = max(MIN_PULL_SECONDS, engine.ready_timeout_seconds)
    launch = EngineLaunch(batch_id, argv, engine.port, engine.image or DEFAULT_IMAGE, pull)
    return _checked(launch, engine)


def _checked(launch: EngineLaunch, engine: EngineSpec) -> EngineLaunch:
    """Refuse what quoting cannot make harmless (the console validates templates; this holds
    for a job document written any other way): a NUL byte, which no shell word can carry, and
    an image or a `vllm serve` model that would be read as an option (`--privileged`)."""
    words = [*launch.argv, *([launch.image] if launch.image else [])]
    if any("\x00" in word for word in words):
        raise EngineLaunchFailed("the engine's command line holds a NUL byte")
    if launch.image is not None and launch.image.startswith("-"):
        raise EngineLaunchFailed(f"engine image {launch.image!r} is not an image name")
    if not engine.command and engine.model_uri.startswith("-"):
        raise EngineLaunchFailed(f"model {engine.model_uri!r} is not a model name")
    return launch


# A process group counts as alive while it has a non-zombie member: a dead engine whose
# parent (init in a container) has not reaped it yet must not look alive forever.
_ALIVE_FN = """alive() {
  if command -v ps >/dev/null 2>&1; then
    ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {f = 1} END {exit !f}'
  else
    kill -0 "-$1" 2>/dev/null
  fi
}
"""


def launch_script(batch_id: str, argv: list[str]) -> str:
    """Start the engine detached, or report the one already running (idempotent relaunch).

    `setsid` makes the engine a session and group leader so `$!` is its group id; `nohup`
    and redirecting all three stdio streams let the SSH session end without waiting for it.
    """
    inner = "exec " + shlex.join(argv)
    d = shlex.quote(workdir(batch_id))
    return (
        _ALIVE_FN
        + f"umask 077\nmkdir -p {d} && cd {d} || exit 97\n"
        + 'if [ -s pid ] && alive "$(cat pid)"; then echo "reused $(cat pid)"; exit 0; fi\n'
        + 'export PATH="$HOME/.local/bin:$PATH"\n'
        + f"setsid nohup sh -c {shlex.quote(inner)} >engine.log 2>&1 </dev/null &\n"
        + 'echo $! >pid\necho "started $!"\n'
    )


def stop_script(batch_id: str, grace_seconds: float) -> str:
    """TERM the engine's process group, KILL it after the grace period, confirm it is gone.

    `kill -TERM -<pgid>` rather than `kill -TERM -- -<pgid>`: dash (Debian's and Ubuntu's
    /bin/sh) rejects the `--` form, and every POSIX shell accepts this one.
    """
    d = shlex.quote(workdir(batch_id))
    ticks = max(1, int(grace_seconds * 5))
    return (
        _ALIVE_FN
        + f"cd {d} 2>/dev/null && [ -s pid ] || {{ echo none; exit 0; }}\n"
        + 'g=$(cat pid)\nalive "$g" || { rm -f pid; echo gone; exit 0; }\n'
        + 'kill -TERM "-$g" 2>/dev/null\n'
        + f'i=0; while alive "$g" && [ "$i" -lt {ticks} ]; do sleep 0.2; i=$((i+1)); done\n'
        + 'if alive "$g"; then kill -KILL "-$g" 2>/dev/null\n'
        + '  i=0; while alive "$g" && [ "$i" -lt 25 ]; do sleep 0.2; i=$((i+1)); done\nfi\n'
        + 'if alive "$g"; then echo "alive $g"; exit 1; fi\nrm -f pid; echo stopped\n'
    )


def cleanup_script(batch_id: str) -> str:
    """Remove the batch's work directory once its engine is gone (a pool machine is reused).

    Only our own directory: the path is built from the checked batch id and quoted, and it is
    removed only when it is a real directory (not a symlink someone planted in /tmp) owned by
    the SSH user. A directory whose engine still runs is kept (its pid file is how a later stop
    finds it). Prints `removed`, `none`, `kept <why>` or `failed`; always exits 0.
    """
    d = shlex.quote(workdir(batch_id))
    return (
        _ALIVE_FN
        + f"d={d}\n"
        + '[ -e "$d" ] || [ -L "$d" ] || { echo none; exit 0; }\n'
        + 'if [ -L "$d" ] || [ ! -d "$d" ] || [ ! -O "$d" ]; then echo "kept not-ours"; exit 0; fi\n'
        + 'if [ -s "$d/pid" ] && alive "$(cat "$d/pid")"; then echo "kept running"; exit 0; fi\n'
        + 'cd / && rm -rf -- "$d" && echo removed || echo failed\n'
    )


def status_script(batch_id: str) -> str:
    d = shlex.quote(workdir(batch_id))
    return (
        _ALIVE_FN
        + f'cd {d} 2>/dev/null && [ -s pid ] && alive "$(cat pid)" && echo running || echo stopped\n'
    )


# --- Docker (lambdaCloud) -----------------------------------------------------------------------
# Every docker call goes through `sudo -n`: Lambda's user is not in the docker group, and `-n`
# makes a sudo that wants a password fail at once instead of hanging on a prompt.
_DOCKER = "sudo -n docker"


def docker_check_script() -> str:
    """Prints `ok`, `no-docker`, `no-nvidia`, or `docker-error <message>`."""
    return (
        f"out=$({_DOCKER} info --format '{{{{json .Runtimes}}}}' 2>&1); rc=$?\n"
        'if [ "$rc" -ne 0 ]; then\n'
        '  case "$out" in *"sudo: not found"*|*"sudo: command not found"*)\n'
        '    echo "docker-error sudo is not available to run docker" ;;\n'
        '    *"not found"*|*"No such file"*) echo no-docker ;;\n'
        '    *) printf "docker-error %s\\n" "$(printf %s "$out" | tr "\\n" " ")" ;; esac\n'
        "  exit 0\nfi\n"
        'case "$out" in *nvidia*) echo ok ;; *) echo no-nvidia ;; esac\n'
    )


def docker_launch_script(launch: EngineLaunch) -> str:
    """Reuse the batch's running container, else replace whatever is left of it and run one.

    Prints `reused <pid>` or `started <pid>` (the container's main process on the machine).
    """
    assert launch.image is not None
    c = shlex.quote(launch.container)
    run = [*_DOCKER.split(), "run", "-d", "--name", launch.container, "--gpus", "all"]
    run += ["--ipc=host", "-p", f"127.0.0.1:{int(launch.port)}:{CONTAINER_PORT}"]
    run += [launch.image, *launch.argv]
    inspect = f"{_DOCKER} inspect --format '{{{{.State.Running}}}} {{{{.State.Pid}}}}' {c}"
    return (
        f"state=$({inspect} 2>/dev/null)\n"
        'case "$state" in "true "*) echo "reused ${state#true }"; exit 0 ;; esac\n'
        f"{_DOCKER} rm -f {c} >/dev/null 2>&1\n"
        f"{shlex.join(run)} >/dev/null || exit 1\n"
        f"state=$({inspect}) || exit 1\n"
        'case "$state" in "true "*) echo "started ${state#true }" ;;\n'
        '  *) echo "container exited right away" >&2; exit 1 ;; esac\n'
    )


def docker_status_script(launch: EngineLaunch) -> str:
    c = shlex.quote(launch.container)
    return (
        f"s=$({_DOCKER} inspect --format '{{{{.State.Running}}}}' {c} 2>/dev/null)\n"
        '[ "$s" = true ] && echo running || echo stopped\n'
    )


def docker_stop_script(launch: EngineLaunch, grace_seconds: float) -> str:
    """Stop (TERM, then KILL after the grace period), remove, confirm the container is gone."""
    c = shlex.quote(launch.container)
    grace = max(1, int(grace_seconds))
    return (
        f"{_DOCKER} inspect {c} >/dev/null 2>&1 || {{ echo none; exit 0; }}\n"
        f"{_DOCKER} stop -t {grace} {c} >/dev/null 2>&1\n"
        f"{_DOCKER} rm -f {c} >/dev/null 2>&1\n"
        f'if {_DOCKER} inspect {c} >/dev/null 2>&1; then echo "alive"; exit 1; fi\n'
        "echo stopped\n"
    )


def docker_logs_script(launch: EngineLaunch, max_bytes: int, lines: int = 2000) -> str:
    """The container's last `lines` lines of output, cut to the last `max_bytes`."""
    c = shlex.quote(launch.container)
    return f"{_DOCKER} logs --tail {int(lines)} {c} 2>&1 | tail -c {int(max_bytes)}; true\n"


# --- either launch mode -------------------------------------------------------------------------


def start_command(launch: EngineLaunch) -> str:
    """Start the engine, or report the one running: prints `started <pid>` or `reused <pid>`."""
    if launch.in_docker:
        return docker_launch_script(launch)
    return launch_script(launch.batch_id, launch.argv)


def status_command(launch: EngineLaunch) -> str:
    """Prints `running` or `stopped`."""
    if launch.in_docker:
        return docker_status_script(launch)
    return status_script(launch.batch_id)


def stop_command(launch: EngineLaunch, grace_seconds: float) -> str:
    if launch.in_docker:
        return docker_stop_script(launch, grace_seconds)
    return stop_script(launch.batch_id, grace_seconds)


def cleanup_command(launch: EngineLaunch) -> str:
    """Remove the batch's work directory (a container's launch never made one: `none`)."""
    return cleanup_script(launch.batch_id)


def log_command(launch: EngineLaunch, max_bytes: int) -> str:
    """The end of the engine's output (its log file, or the container's logs)."""
    if launch.in_docker:
        return docker_logs_script(launch, max_bytes)
    d = shlex.quote(workdir(launch.batch_id))
    return f"tail -c {int(max_bytes)} {d}/engine.log 2>/dev/null; true"


def parse_launched(out: str) -> tuple[int, bool]:
    """(pid, reused) from what `start_command` printed; EngineStartFailed if it makes no sense."""
    word, _, pid = out.strip().partition(" ")
    if word not in ("started", "reused") or not pid.isdigit():
        raise EngineStartFailed(f"unexpected launch output: {out.strip()[:200]!r}")
    return int(pid), word == "reused"
