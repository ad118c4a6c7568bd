"""The SSH side of a batch: connect (host key pinned), launch and stop the engine, port-forward.

Every remote command is a script built here with each interpolated value shell-quoted
(DESIGN rule 6); batch ids are additionally checked against a strict pattern because they
name a directory. Every remote call has a timeout (rule 4). The engine runs in its own
session and process group, detached from the SSH session, so it outlives a dropped
connection, a relaunch finds it through its pid file, and stopping it reaches every worker
process it forked.

Runtime targets (the batch's `runtime`, the provider that leased the machine) decide how the
engine runs; `plan_launch` picks one of two launch modes:

- a process (pid file + setsid): the template's own `engine.command` on every runtime (it wins
  everywhere: that is how the engine simulator runs in tests and the local stack), otherwise
  `vllm serve <model_source.uri> --host 127.0.0.1 --port <engine.port> ...` on `runpod` and `ssh`;
- a container on `lambdaCloud`: `sudo docker run -d --name neobatch-<batch_id> --gpus all
  --ipc=host -p 127.0.0.1:<engine.port>:8000 <engine.image> --model ... --port 8000`, after
  checking that Docker answers and has the NVIDIA runtime (`engine_launch_failed` otherwise).

Either way the engine is only reachable on the machine's loopback, through our port-forward.

The data path (every inference request) and the control path are two SSH connections. The
control commands (launch, stop, status, logs) and the host-key pin go through this module's
asyncssh connection. The port-forward is, by default (when `ssh` is installed), a separate
OpenSSH client process (`tunnel.py`: `ssh -N -L <socket>:127.0.0.1:<port>`, pinned to the
key asyncssh pinned) with a unix-socket local end: measured on a 2-core machine,
asyncssh's in-process forward costs the agent about 0.05 ms of CPU per request (packet framing
in Python, on the same core as dispatch), OpenSSH about 0.036 ms on the other core, and a unix
socket is cheaper than loopback TCP; the dispatch benchmark must reach 80% of a direct
generator. `NEOBATCH_SSH_TUNNEL` (`auto` | `openssh` | `asyncssh`) picks it;
`forward` returns the base URL either way (`unix:/path` or `http://127.0.0.1:PORT`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncssh

from neobatch.common.contracts import EngineSpec, SshEndpoint
from neobatch.common.errors import ConfigError, NeobatchError
from neobatch.common.logs import log_fields, redact_text

log = logging.getLogger("neobatch.runtime_agent.remote")

WORK_ROOT = "/tmp/neobatch"
COMMAND_TIMEOUT_SECONDS = 30.0
# Lambda: the image when the template names none, and the port vLLM listens on inside it.
DEFAULT_IMAGE = "vllm/vllm-openai:latest"
CONTAINER_PORT = 8000
RUNTIMES = ("ssh", "runpod", "lambdaCloud")
# What `docker run` may spend pulling an image, whatever the engine's ready timeout says.
MIN_PULL_SECONDS = 600.0
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Every request crosses the SSH tunnel, so cipher cost is dispatch cost. asyncssh's default
# first choice, chacha20-poly1305, builds six cipher contexts per packet in Python; AES-GCM is
# one call into OpenSSL (AES-NI): on a 2-core machine dispatch through the tunnel went from
# about 1,100 to about 1,900 requests/s.
# The rest of asyncssh's defaults follow, for hosts without AES-GCM.
ENCRYPTION_PREFERENCE = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
]


# Tries to open the OpenSSH tunnel while the control connection stays up (ssh can lose a race
# with a machine that is still settling after a reconnect).
TUNNEL_ATTEMPTS = 3


class RemoteError(NeobatchError):
    code = "ssh_error"


class HostUnreachable(RemoteError):
    code = "ssh_unreachable"


class HostKeyMismatch(RemoteError):
    code = "host_key_mismatch"


class EngineStartFailed(RemoteError):
    code = "engine_start_failed"


class EngineStopFailed(RemoteError):
    code = "engine_stop_failed"


class EngineLaunchFailed(RemoteError):
    """The machine cannot run the engine at all (no Docker, no NVIDIA runtime, bad runtime):
    the planner ends the job `submit_failed`."""

    code = "engine_launch_failed"


def load_client_key(path: str) -> asyncssh.SSHKey:
    """Read the agent's private key; errors name the file, never its content."""
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        reason = redact_text(str(exc)) or type(exc).__name__
        raise ConfigError(f"cannot load SSH private key {path}: {reason}") from None


def public_key_line(key: asyncssh.SSHKey) -> str:
    """`ssh-ed25519 AAAA…` (no comment): the form we pin and compare."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def workdir(batch_id: str) -> str:
    if not _SAFE_ID.match(batch_id):
        raise ValueError(f"unsafe batch id for a remote path: {batch_id!r}")
    return f"{WORK_ROOT}/{batch_id}"


def _flag(key: str) -> str:
    return key if key.startswith("-") else "--" + key.replace("_", "-")


def vllm_options(engine: EngineSpec) -> list[str]:
    """`serve_args`, then `engine_args` as `--flags`, then parallelism sizes above 1."""
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
        return EngineLaunch(batch_id, engine_argv(engine), engine.port)
    _require_vllm(engine)
    argv = ["--model", engine.model_uri, "--served-model-name", engine.serving_name]
    argv += ["--host", "0.0.0.0", "--port", str(CONTAINER_PORT), *vllm_options(engine)]
    pull = max(MIN_PULL_SECONDS, engine.ready_timeout_seconds)
    return EngineLaunch(batch_id, argv, engine.port, engine.image or DEFAULT_IMAGE, pull)


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


def docker_logs_script(launch: EngineLaunch, lines: int = 40) -> str:
    c = shlex.quote(launch.container)
    return f"{_DOCKER} logs --tail {int(lines)} {c} 2>&1; true\n"


class _PinningClient(asyncssh.SSHClient):
    """Trust on first use: with no pinned key, accept and remember the first key seen.

    With a pinned key, asyncssh accepts only that key (it is passed as known_hosts), and any
    other key reaches this method and is refused.
    """

    def __init__(self, pinned: bool) -> None:
        self._pinned = pinned
        self.closed = asyncio.Event()

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return not self._pinned

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


class RemoteHost:
    """One SSH connection to a batch's machine."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        client: _PinningClient,
        *,
        target: SshEndpoint,
        client_key: asyncssh.SSHKey,
        key_file: str | None = None,
        tunnel: str = "auto",
        connect_timeout_seconds: float = COMMAND_TIMEOUT_SECONDS,
    ) -> None:
        from neobatch.runtime_agent import tunnel as tunnels  # it imports this module's errors

        self._conn = conn
        self._client = client
        self._target = target
        self._client_key = client_key
        self._key_file = key_file
        # "openssh" or "asyncssh": how `forward` carries the data path.
        self.tunnel_mode = tunnels.resolve_mode(tunnel)
        self._connect_timeout = connect_timeout_seconds
        self._listeners: list[asyncssh.SSHListener] = []
        self._tunnels: list[tunnels.OpenSshTunnel] = []
        key = conn.get_server_host_key()
        assert key is not None
        self.host_public_key = public_key_line(key)

    @property
    def is_closed(self) -> bool:
        """The control connection (asyncssh) closed."""
        return self._client.closed.is_set()

    @property
    def tunnel_down(self) -> bool:
        """The control connection closed, or the OpenSSH tunnel of the last forward exited:
        requests through the forward cannot get through any more."""
        return self.is_closed or bool(self._tunnels and self._tunnels[-1].is_down)

    async def run(self, script: str, timeout_seconds: float = COMMAND_TIMEOUT_SECONDS) -> str:
        """Run `script` with `sh`; returns stdout, raises RemoteError on failure or timeout."""
        try:
            result = await asyncio.wait_for(
                self._conn.run(script, check=False), timeout=timeout_seconds
            )
        except TimeoutError:
            raise RemoteError(f"remote command timed out after {timeout_seconds:.0f}s") from None
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"remote command failed: {type(exc).__name__}") from None
        stdout = _text(result.stdout)
        if result.exit_status != 0:
            stderr = redact_text(_text(result.stderr).strip())[-300:]
            raise RemoteError(
                f"remote command exited with {result.exit_status}: {stderr or stdout.strip()}"
            )
        return stdout

    async def start_engine(self, batch_id: str, argv: list[str]) -> int:
        """Launch (or find) the engine as a detached process; returns its process group id."""
        out = await self.run(launch_script(batch_id, argv))
        return _launched(batch_id, out)

    async def engine_running(self, batch_id: str) -> bool:
        return (await self.run(status_script(batch_id))).strip() == "running"

    async def engine_log_tail(self, batch_id: str, max_bytes: int = 2000) -> str:
        d = shlex.quote(workdir(batch_id))
        out = await self.run(f"tail -c {int(max_bytes)} {d}/engine.log 2>/dev/null; true")
        return redact_text(out)

    async def stop_engine(self, batch_id: str, grace_seconds: float) -> None:
        """Stop the engine and confirm no process of its group is left."""
        await self._stop(batch_id, stop_script(batch_id, grace_seconds), grace_seconds)

    # --- either launch mode -----------------------------------------------------------------

    async def check_docker(self) -> None:
        """Docker answers (through sudo) and has the NVIDIA runtime, or EngineLaunchFailed."""
        out = (await self.run(docker_check_script())).strip()
        word, _, detail = out.partition(" ")
        if word == "ok":
            return
        if word == "no-docker":
            raise EngineLaunchFailed("docker is not installed on the machine")
        if word == "no-nvidia":
            raise EngineLaunchFailed(
                "the NVIDIA container runtime is missing: docker cannot run --gpus all"
            )
        reason = redact_text(detail.strip())[-300:] or out[:200]
        raise EngineLaunchFailed(f"docker is not usable on the machine: {reason}")

    async def launch(self, launch: EngineLaunch) -> tuple[int, bool]:
        """Start (or find) the engine; returns (pid, reused)."""
        if not launch.in_docker:
            out = await self.run(launch_script(launch.batch_id, launch.argv))
            pid = _launched(launch.batch_id, out)
            return pid, out.startswith("reused")
        await self.check_docker()
        try:
            out = await self.run(docker_launch_script(launch), launch.launch_timeout_seconds)
        except RemoteError as exc:
            raise EngineLaunchFailed(f"docker run failed: {exc.message}") from None
        return _launched(launch.batch_id, out), out.startswith("reused")

    async def is_running(self, launch: EngineLaunch) -> bool:
        if not launch.in_docker:
            return await self.engine_running(launch.batch_id)
        return (await self.run(docker_status_script(launch))).strip() == "running"

    async def log_tail(self, launch: EngineLaunch, max_bytes: int = 2000) -> str:
        if not launch.in_docker:
            return await self.engine_log_tail(launch.batch_id, max_bytes)
        out = await self.run(docker_logs_script(launch))
        return redact_text(out[-max_bytes:])

    async def stop(self, launch: EngineLaunch, grace_seconds: float) -> None:
        if not launch.in_docker:
            await self.stop_engine(launch.batch_id, grace_seconds)
        else:
            script = docker_stop_script(launch, grace_seconds)
            await self._stop(launch.batch_id, script, grace_seconds)

    async def _stop(self, batch_id: str, script: str, grace_seconds: float) -> None:
        try:
            out = await self.run(script, timeout_seconds=grace_seconds + 15)
        except RemoteError as exc:
            raise EngineStopFailed(f"engine did not stop: {exc.message}") from None
        log.info("engine stopped", extra=log_fields(batch_id=batch_id, result=out.strip()))

    async def forward(self, remote_port: int) -> str:
        """Forward to the engine's loopback port there; returns the base URL to reach it here.

        `unix:/private/dir/engine.sock` through an OpenSSH subprocess (`tunnel.py`), or
        `http://127.0.0.1:PORT` through this asyncssh connection (`tunnel_mode`). A tunnel that
        went down before (its ssh exited) is let go of first.
        """
        if self.tunnel_mode == "asyncssh":
            listener = await asyncio.wait_for(
                self._conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", remote_port),
                timeout=COMMAND_TIMEOUT_SECONDS,
            )
            self._listeners.append(listener)
            return f"http://127.0.0.1:{int(listener.get_port())}"
        from neobatch.runtime_agent import tunnel as tunnels

        for dead in [t for t in self._tunnels if t.is_down]:
            self._tunnels.remove(dead)
            await dead.close()
        attempt, delay = 1, 0.5
        while True:
            try:
                opened = await tunnels.open_tunnel(
                    self._target,
                    remote_port,
                    host_public_key=self.host_public_key,
                    client_key=self._client_key,
                    key_file=self._key_file,
                    connect_timeout_seconds=self._connect_timeout,
                )
                break
            except HostKeyMismatch:
                raise  # never retried: it does not heal
            except tunnels.TunnelFailed as exc:
                if self.is_closed:
                    # The machine dropped again (a blip): for the caller this is the connection
                    # lost, which it reconnects or resumes from, not a broken tunnel.
                    raise HostUnreachable(
                        f"connection lost while opening the tunnel: {exc}"
                    ) from exc
                if attempt == TUNNEL_ATTEMPTS:
                    raise
                log.warning(
                    "ssh tunnel failed to open; retrying",
                    extra=log_fields(attempt=attempt, error=exc.message),
                )
                await asyncio.sleep(delay)
                attempt, delay = attempt + 1, delay * 2
        self._tunnels.append(opened)
        return opened.base_url

    async def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        tunnels, self._tunnels = self._tunnels, []
        for opened in tunnels:
            await opened.close()
        self._conn.close()
        try:
            await asyncio.wait_for(self._conn.wait_closed(), timeout=5)
        except TimeoutError:
            self._conn.abort()


def _launched(batch_id: str, out: str) -> int:
    word, _, pid = out.strip().partition(" ")
    if word not in ("started", "reused") or not pid.isdigit():
        raise EngineStartFailed(f"unexpected launch output: {out.strip()[:200]!r}")
    log.info("engine launched", extra=log_fields(batch_id=batch_id, pid=int(pid), how=word))
    return int(pid)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


async def connect(
    target: SshEndpoint,
    client_key: asyncssh.SSHKey,
    pinned_host_key: str | None,
    *,
    connect_timeout_seconds: float,
    key_file: str | None = None,
    tunnel: str = "auto",
) -> RemoteHost:
    """One connection attempt. The caller pins `RemoteHost.host_public_key` on first use.

    `key_file`: where `client_key` was read from (None: it exists only in memory); `tunnel`:
    the `ssh_tunnel` setting, how `RemoteHost.forward` carries the data path.
    """
    trusted = [asyncssh.import_public_key(pinned_host_key)] if pinned_host_key else []
    client = _PinningClient(pinned=bool(pinned_host_key))
    try:
        conn, _ = await asyncio.wait_for(
            asyncssh.create_connection(
                lambda: client,
                target.host,
                target.port,
                username=target.username,
                client_keys=[client_key],
                # Lists, not a file: only the pinned key counts, never ~/.ssh/known_hosts.
                known_hosts=(trusted, [], []),
                agent_path=None,
                config=[],
                x509_trusted_certs=None,
                encryption_algs=ENCRYPTION_PREFERENCE,
                connect_timeout=connect_timeout_seconds,
                keepalive_interval=15,
                keepalive_count_max=3,
            ),
            timeout=connect_timeout_seconds + 5,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise HostKeyMismatch(
            f"host key of {target.host}:{target.port} does not match the pinned key"
        ) from None
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise HostUnreachable(
            f"cannot reach {target.username}@{target.host}:{target.port}: {type(exc).__name__}"
        ) from None
    return RemoteHost(
        conn,
        client,
        target=target,
        client_key=client_key,
        key_file=key_file,
        tunnel=tunnel,
        connect_timeout_seconds=connect_timeout_seconds,
    )


async def connect_until(
    target: SshEndpoint,
    client_key: asyncssh.SSHKey,
    pinned_host_key: str | None,
    *,
    connect_timeout_seconds: float,
    ready_timeout_seconds: float,
    still_wanted: Callable[[], Awaitable[bool]] | None = None,
    key_file: str | None = None,
    tunnel: str = "auto",
) -> RemoteHost:
    """Retry `connect` with capped backoff until `ready_timeout_seconds` (a booting machine,
    or one whose connection dropped).

    A host key mismatch is never retried: it does not heal, and retrying would only hide it.
    `still_wanted`, asked before each retry, ends the wait early (HostUnreachable) when the
    machine stopped mattering (the batch was moved to a replacement).
    """
    deadline = time.monotonic() + ready_timeout_seconds
    delay = 0.5
    while True:
        try:
            return await connect(
                target,
                client_key,
                pinned_host_key,
                connect_timeout_seconds=connect_timeout_seconds,
                key_file=key_file,
                tunnel=tunnel,
            )
        except HostUnreachable as exc:
            if time.monotonic() + delay >= deadline:
                raise HostUnreachable(
                    f"{exc.message} (gave up after {ready_timeout_seconds:.0f}s)"
                ) from None
            if still_wanted is not None and not await still_wanted():
                raise HostUnreachable(f"{exc.message} (no longer the batch's machine)") from None
            log.info("ssh not reachable yet; retrying", extra=log_fields(error=exc.message))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
