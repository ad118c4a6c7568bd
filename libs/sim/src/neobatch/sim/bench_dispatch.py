"""`task bench:dispatch`: the runtime-agent's dispatch path against a nearly free engine.

The engine is nginx with the echo module (Debian's `nginx-light` + `libnginx-mod-http-echo`,
installed with apt-get when missing): `/v1/chat/completions` answers a fixed chat.completion
body after 20 ms (`echo_sleep 0.02`), `/health` answers 200. Its cost is a few microseconds
per request, so what is measured is the client side.

1. Throughput — the same N requests (default 20,000), concurrency 256:
   * direct: a minimal asyncio + aiohttp load generator straight to nginx;
   * agent: a real batch through the runtime-agent, in its own process: input file in
     GridFS (SecantusDB process), validation, SSH connect to a loopback SSH host (a separate
     process: OpenSSH's sshd, what a rented GPU machine runs, when installed (`--ssh auto`);
     else, or with `--ssh sim`, the `neobatch.sim.ssh_host` asyncssh server), the engine
     launched by the template's `command` over SSH, the agent's SSH tunnel (an `ssh -L`
     child with a unix socket), the EngineClient (engine_http), CheckpointWriter into
     `batch_results`
     and the output file assembled into GridFS. The rate is requests / the run's
     `dispatch_seconds` (dispatch + checkpoints; the output file time is printed apart).
   * for scale: the agent's HTTP client (engine_http) straight to nginx, and the same
     client through the agent's own SSH connection and tunnel
     alone (`remote.connect` + `forward`: OpenSSH's `ssh -L` to a unix socket when `ssh`
     is installed, as the agent uses it, else asyncssh's forward).
   Rounds (`--rounds`, default 3) interleave them, since a shared machine's load moves the
   rates; the round with the median ratio is the figure, and each path's client CPU per
   request is printed beside it (steadier than the rates).
2. Memory — peak RSS (VmHWM) of the agent process for a 50,000-request ~200 MB input vs a
   1,000-request input with the same line size.

    python -m neobatch.sim.bench_dispatch [--only throughput|memory] [--requests N]
        [--rounds R] [--ssh auto|sim|openssh] [--profile FILE (py-spy)] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL = "bench-model"
CHAT = "/v1/chat/completions"
CONCURRENCY = 256
ENGINE_SLEEP_SECONDS = 0.02
ECHO_MODULE_CANDIDATES = (
    "/usr/lib/nginx/modules/ngx_http_echo_module.so",
    "/usr/share/nginx/modules/ngx_http_echo_module.so",
)
APT_PACKAGES = ("nginx-light", "libnginx-mod-http-echo")

REPLY = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1764288000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Batch inference runs many requests."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
}


class NginxUnavailable(RuntimeError):
    pass


# --- the engine: nginx + echo ----------------------------------------------------------------


@dataclass(frozen=True)
class Nginx:
    binary: str
    echo_module: str


def find_nginx() -> Nginx | None:
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )
    module = next((p for p in ECHO_MODULE_CANDIDATES if os.path.exists(p)), None)
    if binary and module:
        return Nginx(binary, module)
    return None


def ensure_nginx(*, install: bool = True) -> Nginx:
    """nginx and its echo module, installed from Debian's packages if missing (needs root)."""
    found = find_nginx()
    if found is not None or not install:
        if found is None:
            raise NginxUnavailable("nginx with the echo module is not installed")
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise NginxUnavailable(
            "nginx with the echo module is missing and cannot be installed here "
            f"(needs root and apt-get): apt-get install {' '.join(APT_PACKAGES)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
    ):
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise NginxUnavailable(f"{' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    found = find_nginx()
    if found is None:
        raise NginxUnavailable(f"installed {' '.join(APT_PACKAGES)} but found no nginx/echo")
    return found


def nginx_conf(nginx: Nginx, prefix: Path, port: int) -> str:
    """A self-contained config: own pid, logs and temp paths under `prefix`, loopback only."""
    body = json.dumps(REPLY, separators=(",", ":"))
    # Debian's nginx starts as root and drops to this user for its worker.
    user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
    return f"""load_module {nginx.echo_module};
{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/client_body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_buffer_size 1m;
  client_max_body_size 16m;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = {CHAT} {{
      default_type application/json;
      echo_read_request_body;
      echo_sleep {ENGINE_SLEEP_SECONDS};
      echo '{body}';
    }}
    location = /health {{
      default_type text/plain;
      return 200 'ok';
    }}
  }}
}}
"""


def write_nginx(nginx: Nginx, prefix: Path, port: int) -> list[str]:
    """Write the config under `prefix`; return the engine command line that serves it."""
    prefix.mkdir(parents=True, exist_ok=True)
    prefix.chmod(0o755)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(nginx, prefix, port))
    return [
        nginx.binary,
        "-p",
        str(prefix),
        "-e",
        str(prefix / "error.log"),
        "-c",
        str(conf),
        "-g",
        "daemon off;",
    ]


# --- input ------------------------------------------------------------------------------------


def request_line(index: int, pad: int = 0) -> bytes:
    """One input line; `pad` characters of filler make a large file of realistic lines."""
    content = f"Request {index}: explain batch inference in one sentence."
    if pad:
        content += " " + ("lorem ipsum " * (pad // 12 + 1))[:pad]
    line = {
        "custom_id": f"req-{index}",
        "method": "POST",
        "url": CHAT,
        "body": {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 16,
        },
    }
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


async def upload_input(db: Any, requests: int, pad: int) -> tuple[str, int]:
    """Stream `requests` lines into GridFS; returns (file id, bytes)."""
    from neobatch.common import filestore

    size = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal size
        buf = bytearray()
        for i in range(requests):
            buf += request_line(i, pad)
            if len(buf) >= 1 << 20:
                size += len(buf)
                yield bytes(buf)
                buf.clear()
        if buf:
            size += len(buf)
            yield bytes(buf)

    file_id = filestore.new_file_id()
    await filestore.save_file(db, file_id, "bench.jsonl", chunks(), purpose="batch", owner="bench")
    return file_id, size


# --- direct load generator ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    rps: float
    # CPU of the client side per request, in ms: steadier than the rate on a shared machine.
    cpu_ms: float


def request_bodies(requests: int, pad: int = 0) -> list[bytes]:
    """The request bodies of the input lines, as a load generator sends them."""
    return [
        json.dumps(json.loads(request_line(i, pad))["body"], separators=(",", ":")).encode()
        for i in range(requests)
    ]


async def timed_workers(
    worker: Callable[[], Awaitable[None]], requests: int, concurrency: int
) -> Rate:
    """Run `concurrency` copies of `worker` (each sending until the requests run out)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return Rate(requests / elapsed, cpu / requests * 1e3)


async def direct_rate(base_url: str, requests: int, concurrency: int, pad: int = 0) -> Rate:
    """Requests per second of a minimal aiohttp generator sending the same requests."""
    import aiohttp

    bodies = request_bodies(requests, pad)
    headers = {"Content-Type": "application/json"}
    next_index = 0
    failures = 0
    url = base_url + CHAT
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal next_index, failures
            while next_index < requests:
                body = bodies[next_index]
                next_index += 1
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures += 1

        rate = await timed_workers(worker, requests, concurrency)
    if failures:
        raise RuntimeError(f"direct: {failures} requests failed")
    return rate


# --- the agent, in its own process ---------------------------------------------------------------


@dataclass
class AgentJob:
    mongo_url: str
    db_name: str
    key_file: str
    ssh_host: str
    ssh_port: int
    ssh_user: str
    input_file_id: str
    engine_command: list[str]
    engine_port: int
    concurrency: int
    timeout_seconds: float


async def run_agent_job(job: AgentJob) -> dict[str, Any]:
    """Run one batch through a real agent; returns its figures (called in the child)."""
    import uuid

    from neobatch.common.contracts import BatchRequested, ClientSpec, EngineSpec, SshEndpoint
    from neobatch.common.settings import CommonSettings
    from neobatch.runtime_agent.app import build_agent
    from neobatch.runtime_agent.batch.batches import is_terminal
    from neobatch.runtime_agent.settings import AgentSettings

    common = CommonSettings(
        mongo_url=job.mongo_url, db_name=job.db_name, namespace=f"b{uuid.uuid4().hex[:10]}"
    )
    from neobatch.runtime_agent.dispatch import DispatchDefaults

    # The bench runs a fixed concurrency (no adaptive ramp); the job's client block says so too.
    dispatch = DispatchDefaults(
        concurrency=job.concurrency, request_timeout_seconds=120.0, max_retries=2, adaptive=False
    )
    settings = AgentSettings(
        common=common,
        ssh_key_file=job.key_file,
        dispatch=dispatch,
        poll_interval_seconds=0.2,
        engine_stop_grace_seconds=5.0,
    )
    agent = build_agent(settings)
    await agent.store.ensure_indexes()
    runner = asyncio.create_task(agent.runner.run())
    batch_id = f"batch_{uuid.uuid4().hex}"
    engine = EngineSpec(
        serving_name=MODEL,
        model_uri="bench://nginx-echo",
        command=job.engine_command,
        port=job.engine_port,
        ready_timeout_seconds=30.0,
    )
    event = BatchRequested(
        batch_id=batch_id,
        job_id=f"job_{uuid.uuid4().hex}",
        provision_id=f"prov_{uuid.uuid4().hex}",
        input_file_id=job.input_file_id,
        endpoint=CHAT,
        owner="bench",
        target=SshEndpoint(host=job.ssh_host, port=job.ssh_port, username=job.ssh_user),
        engine=engine,
        client=ClientSpec(max_concurrency=job.concurrency, adaptive_concurrency=False),
    )
    started = time.perf_counter()
    cpu_started = time.process_time()
    await agent.handlers.on_batch_requested(event)
    deadline = time.monotonic() + job.timeout_seconds
    try:
        # The largest resident set seen in each batch status (sampled as the batch is polled).
        rss_by_status: dict[str, float] = {}
        # Process CPU when the batch was first seen in_progress and first seen past it.
        cpu_dispatch = [0.0, 0.0]
        while True:
            batch = await agent.store.find_batch(batch_id)
            if batch is not None:
                key = batch.status.value
                rss_by_status[key] = max(rss_by_status.get(key, 0.0), rss_mb())
                if key == "in_progress":
                    cpu_dispatch[0] = cpu_dispatch[0] or time.process_time()
                elif cpu_dispatch[0] and not cpu_dispatch[1]:
                    cpu_dispatch[1] = time.process_time()
            if batch is not None and is_terminal(batch.status):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch not finished after {job.timeout_seconds}s")
            await asyncio.sleep(0.1)
        total = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        stored = len(await agent.store.finished_lines(batch_id))
        return {
            "batch_id": batch_id,
            "status": batch.status.value,
            "error": f"{batch.error_code}: {batch.error_message}" if batch.error_code else "",
            "completed": batch.request_counts.completed,
            "failed": batch.request_counts.failed,
            "stored_results": stored,
            "output_file_id": batch.output_file_id,
            "dispatch_seconds": batch.dispatch_seconds,
            "total_seconds": total,
            "cpu_seconds": cpu,
            "dispatch_cpu_seconds": cpu_dispatch[1] - cpu_dispatch[0],
            "rss_by_status": rss_by_status,
        }
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await agent.runtime.mongo.close()


def _status_kb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children (the sshd session)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_mb() -> float:
    """VmHWM: the process's peak resident set so far."""
    return _status_kb("VmHWM:")


def rss_mb() -> float:
    return _status_kb("VmRSS:")


def child_main(job_json: str) -> None:
    """`--child JOB`: run the batch in this fresh process and print its figures as JSON."""
    from neobatch.common.logs import configure_logging

    # The agent's own JSON log lines (with their fields) to the child's stderr, the run's log.
    configure_logging("runtime-agent", os.environ.get("NEOBATCH_LOG_LEVEL", "WARNING"))
    job = AgentJob(**json.loads(job_json))
    baseline = peak_rss_mb()
    figures = asyncio.run(run_agent_job(job))
    figures["peak_rss_mb"] = peak_rss_mb()
    figures["startup_rss_mb"] = baseline
    # The agent's own children, reaped by now: its `ssh -L` tunnel (the OpenSSH data path).
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures["children_cpu_seconds"] = children.ru_utime + children.ru_stime
    print("BENCH-RESULT " + json.dumps(figures), flush=True)


def run_child(job: AgentJob, log_path: Path, profile: Path | None = None) -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "neobatch.sim.bench_dispatch",
        "--child",
        json.dumps(job.__dict__),
    ]
    if profile is not None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        args = [py_spy, "record", "-o", str(profile), "-f", "raw", "-r", "100", "--", *args]
    with open(log_path, "ab") as log:
        done = subprocess.run(args, stdout=subprocess.PIPE, stderr=log, check=False)
    out = done.stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("BENCH-RESULT "):
            figures: dict[str, Any] = json.loads(line.removeprefix("BENCH-RESULT "))
            # The engine's directory on the "machine" (this one): its pid file and log.
            from neobatch.runtime_agent.machine.launch import workdir

            shutil.rmtree(workdir(figures["batch_id"]), ignore_errors=True)
            return figures
    raise RuntimeError(f"agent process exited {done.returncode} without a result; see {log_path}")


# --- the stack ------------------------------------------------------------------------------------


def find_sshd() -> str | None:
    """OpenSSH's server, the SSH host a rented GPU machine runs."""
    found = shutil.which("sshd") or "/usr/sbin/sshd"
    return found if os.path.exists(found) else None


class Stack:
    """SecantusDB, an SSH host on loopback and the nginx engine's config, in a temp dir."""

    def __init__(self, workdir: Path, nginx: Nginx, ssh: str = "sim") -> None:
        self.workdir = workdir
        self.nginx = nginx
        self.ssh = ssh
        self.processes: list[Any] = []

    def start(self) -> None:
        import asyncssh

        from neobatch.sim import servers
        from neobatch.sim.ssh_host import public_key_line, write_private_key

        w = self.workdir
        (w / "logs").mkdir(parents=True, exist_ok=True)
        mongo_port = servers.free_port()
        self.processes.append(servers.start_mongo(mongo_port, ":memory:", w / "logs/secantus.log"))
        self.mongo_url = f"mongodb://127.0.0.1:{mongo_port}"
        key_dir = w / "client"
        key_dir.mkdir(mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519")
        self.key_file = key_dir / "id_ed25519"
        write_private_key(key, self.key_file)
        authorized = w / "authorized_keys"
        authorized.write_text(public_key_line(key) + "\n")
        authorized.chmod(0o600)
        self.ssh_port = servers.free_port()
        if self.ssh == "openssh":
            self.processes.append(self._start_sshd(authorized))
        else:
            home = w / "home"
            home.mkdir()
            args = ["--host", "127.0.0.1", "--port", str(self.ssh_port)]
            args += ["--authorized-keys", str(authorized), "--host-key", str(w / "host_key")]
            args += ["--workdir", str(home)]
            proc = servers.start_python_module(
                "neobatch.sim.ssh_host",
                args,
                env={"NEOBATCH_LOG_LEVEL": "WARNING"},
                log_path=w / "logs/ssh_host.log",
            )
            self.processes.append(proc)
            servers.wait_port("127.0.0.1", self.ssh_port, 20, process=proc)
        self.engine_port = servers.free_port()
        self.engine_command = write_nginx(self.nginx, w / "nginx", self.engine_port)

    def _start_sshd(self, authorized: Path) -> Any:
        from neobatch.sim import servers

        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError(
                "--ssh openssh needs OpenSSH's sshd (apt-get install openssh-server)"
            )
        w = self.workdir
        host_key = w / "sshd_host_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        config = w / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.ssh_port}\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "AllowTcpForwarding local\nPermitOpen 127.0.0.1:*\nUsePAM no\nStrictModes no\n"
            f"PidFile {w}/sshd.pid\nLogLevel ERROR\nMaxSessions 64\nMaxStartups 64\n"
        )
        proc = servers.ManagedProcess(
            [sshd, "-D", "-e", "-f", str(config)], w / "logs/sshd.log", name="sshd"
        )
        servers.wait_port("127.0.0.1", self.ssh_port, 20, process=proc)
        return proc

    def helper_pids(self) -> dict[str, int]:
        """The processes besides the agent that share the CPU with it during a run."""
        names = {"secantus": "database", "neobatch.sim.ssh_host": "ssh host", "sshd": "ssh host"}
        return {names.get(p.name, p.name): p.pid for p in self.processes}

    def job(self, db_name: str, input_file_id: str, concurrency: int, timeout: float) -> AgentJob:
        import getpass

        return AgentJob(
            mongo_url=self.mongo_url,
            db_name=db_name,
            key_file=str(self.key_file),
            ssh_host="127.0.0.1",
            ssh_port=self.ssh_port,
            ssh_user=getpass.getuser(),
            input_file_id=input_file_id,
            engine_command=self.engine_command,
            engine_port=self.engine_port,
            concurrency=concurrency,
            timeout_seconds=timeout,
        )

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()


class DirectEngine:
    """nginx started here (not through the agent) for the direct load generator."""

    def __init__(self, nginx: Nginx, prefix: Path) -> None:
        from neobatch.sim import servers

        self.port = servers.free_port()
        command = write_nginx(nginx, prefix, self.port)
        self.process = servers.ManagedProcess(command, prefix / "stdout.log", name="nginx")
        servers.wait_port("127.0.0.1", self.port, 10, process=self.process)

    def stop(self) -> None:
        self.process.stop()


# --- the two measurements --------------------------------------------------------------------------


async def _upload(mongo_url: str, db_name: str, requests: int, pad: int) -> tuple[str, int]:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        return await upload_input(client[db_name], requests, pad)
    finally:
        await client.close()


async def engine_client_rate(base_url: str, requests: int, concurrency: int) -> Rate:
    """For scale: the same requests straight to nginx with the agent's HTTP client alone."""
    from neobatch.runtime_agent.engine.http import EngineHTTP

    bodies = request_bodies(requests)
    http = EngineHTTP(base_url, max_connections=concurrency)
    headers = (("Content-Type", "application/json"),)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests:
            body = bodies[next_index]
            next_index += 1
            resp = await http.request("POST", CHAT, body=body, headers=headers, timeout_seconds=60)
            if resp.status != 200:
                raise RuntimeError(f"engine client: HTTP {resp.status}")

    try:
        return await timed_workers(worker, requests, concurrency)
    finally:
        await http.close()


async def tunnel_rate(stack: Stack, engine_port: int, requests: int, concurrency: int) -> Rate:
    """The agent's HTTP client through the agent's own SSH tunnel alone (no agent around it)."""
    import getpass

    from neobatch.common.contracts import SshEndpoint
    from neobatch.runtime_agent.machine import remote

    target = SshEndpoint(host="127.0.0.1", port=stack.ssh_port, username=getpass.getuser())
    key = remote.load_client_key(str(stack.key_file))
    # The agent's default data path: OpenSSH's `ssh -L` to a unix socket when `ssh` is installed.
    host = await remote.connect(target, key, None, connect_timeout_seconds=10)
    try:
        base_url = await host.forward(engine_port)
        return await engine_client_rate(base_url, requests, concurrency)
    finally:
        await host.close()


def measure_throughput(
    stack: Stack,
    nginx: Nginx,
    requests: int,
    concurrency: int,
    *,
    rounds: int = 1,
    profile: Path | None = None,
) -> dict[str, Any]:
    """`rounds` times: direct, through the tunnel alone, the agent; the median is the figure.

    Rounds interleave the three so a neighbour's load on a shared machine hits them alike.
    """
    file_id, _ = asyncio.run(_upload(stack.mongo_url, "bench_throughput", requests, 0))
    results: list[dict[str, Any]] = []
    for n in range(rounds):
        engine = DirectEngine(nginx, stack.workdir / f"nginx-direct-{n}")
        try:
            url = f"http://127.0.0.1:{engine.port}"
            direct = asyncio.run(direct_rate(url, requests, concurrency))
            lean = asyncio.run(engine_client_rate(url, requests, concurrency))
            tunnel = asyncio.run(tunnel_rate(stack, engine.port, requests, concurrency))
        finally:
            engine.stop()
        job = stack.job("bench_throughput", file_id, concurrency, timeout=max(300, requests / 20))
        helpers = stack.helper_pids()
        before = {name: cpu_seconds(pid) for name, pid in helpers.items()}
        log = stack.workdir / f"logs/agent-throughput-{n}.log"
        agent = run_child(job, log, profile if n == 0 else None)
        agent["helper_cpu_seconds"] = {
            name: cpu_seconds(pid) - before[name] for name, pid in helpers.items()
        }
        _check(agent, requests)
        agent_rate = requests / agent["dispatch_seconds"]
        results.append(
            {
                "direct_rps": direct.rps,
                "direct_cpu_ms": direct.cpu_ms,
                "lean_rps": lean.rps,
                "lean_cpu_ms": lean.cpu_ms,
                "tunnel_rps": tunnel.rps,
                "tunnel_cpu_ms": tunnel.cpu_ms,
                "agent_rps": agent_rate,
                "agent_cpu_ms": agent["dispatch_cpu_seconds"] / requests * 1e3,
                "ratio": agent_rate / direct.rps,
                "agent": agent,
            }
        )
    median = sorted(results, key=lambda r: r["ratio"])[len(results) // 2]
    return {"requests": requests, "rounds": results, **median}


def measure_memory(stack: Stack, large: int, small: int, line_bytes: int) -> dict[str, Any]:
    pad = max(0, line_bytes - len(request_line(0)))
    rows = []
    for n in (small, large):
        db = f"bench_memory_{n}"
        file_id, size = asyncio.run(_upload(stack.mongo_url, db, n, pad))
        job = stack.job(db, file_id, CONCURRENCY, timeout=max(600, n / 20))
        figures = run_child(job, stack.workdir / f"logs/agent-memory-{n}.log")
        _check(figures, n)
        rows.append({"requests": n, "input_mb": size / 1e6, **figures})
    return {"rows": rows, "delta_mb": rows[1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]}


def _check(figures: dict[str, Any], requests: int) -> None:
    if figures["status"] != "completed" or figures["completed"] != requests:
        raise RuntimeError(
            f"agent batch ended {figures['status']} with {figures['completed']}/{requests} "
            f"completed ({figures['error']})"
        )


# --- printing -------------------------------------------------------------------------------------


def print_throughput(t: dict[str, Any], ssh: str) -> None:
    rounds = t["rounds"]
    print(
        f"\nThroughput: {t['requests']} requests, concurrency {CONCURRENCY}, nginx echo "
        f"{ENGINE_SLEEP_SECONDS * 1000:.0f} ms, SSH host: {ssh}, {len(rounds)} round(s)"
    )
    heads = "".join(f"{'round ' + str(i + 1):>9}" for i in range(len(rounds)))
    print(f"{'req/s':<56}{heads}{'mid':>9}{'CPU ms/req':>12}")
    paths = [
        ("direct", "direct: asyncio + aiohttp -> nginx"),
        ("lean", "for scale: the agent's HTTP client alone -> nginx"),
        ("tunnel", "for scale: the same client through the agent's SSH tunnel"),
        ("agent", "agent: GridFS, SSH tunnel, EngineClient, checkpoints"),
    ]
    for key, label in paths:
        values = "".join(f"{r[key + '_rps']:>9.0f}" for r in rounds)
        print(f"{label:<56}{values}{t[key + '_rps']:>9.0f}{t[key + '_cpu_ms']:>12.2f}")
    ratios = "".join(f"{r['ratio']:>9.1%}" for r in rounds)
    print(f"{'ratio agent/direct':<56}{ratios}{t['ratio']:>9.1%}")
    print(
        "CPU ms/req: the client side in the mid round (agent: its process while in_progress, "
        "not its ssh child)"
    )
    verdict = "meets" if t["ratio"] >= 0.8 else "below"
    print(
        f"mid = the round with the median ratio; ratio {t['ratio']:.1%}: {verdict} the 80% target"
    )
    a = t["agent"]
    print(
        f"agent (mid round): dispatch {a['dispatch_seconds']:.2f}s, whole batch "
        f"{a['total_seconds']:.2f}s (validation, SSH, engine launch, output file), "
        f"{a['stored_results']} checkpoints, peak RSS {a['peak_rss_mb']:.0f} MB"
    )
    n = t["requests"]
    cpu = [f"agent {a['cpu_seconds'] / n * 1e3:.2f}"]
    cpu += [f"its ssh tunnel {a.get('children_cpu_seconds', 0.0) / n * 1e3:.2f}"]
    cpu += [f"{k} {v / n * 1e3:.2f}" for k, v in a["helper_cpu_seconds"].items()]
    print(f"CPU ms per request over the whole batch: {', '.join(cpu)} ({os.cpu_count()} cores)")


def print_memory(m: dict[str, Any]) -> None:
    print("\nMemory: peak RSS (VmHWM) of the agent process, one batch each")
    print(f"{'requests':>9} {'input MB':>9} {'peak RSS MB':>12} {'at start MB':>12} {'batch s':>8}")
    for r in m["rows"]:
        print(
            f"{r['requests']:>9} {r['input_mb']:>9.1f} {r['peak_rss_mb']:>12.1f} "
            f"{r['startup_rss_mb']:>12.1f} {r['total_seconds']:>8.1f}"
        )
        phases = ", ".join(f"{k} {v:.0f}" for k, v in r["rss_by_status"].items())
        print(f"{'':>9} largest RSS sampled per status (MB): {phases}")
    peak = max(r["peak_rss_mb"] for r in m["rows"])
    ok = peak < 250 and abs(m["delta_mb"]) <= 50
    print(
        f"difference: {m['delta_mb']:+.1f} MB; targets < 250 MB and within 50 MB: "
        f"{'met' if ok else 'NOT met'}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m neobatch.sim.bench_dispatch")
    parser.add_argument("--only", choices=("throughput", "memory"), default=None)
    parser.add_argument("--requests", type=int, default=20_000, help="throughput requests")
    parser.add_argument("--memory-requests", type=int, default=50_000)
    parser.add_argument("--memory-small", type=int, default=1_000)
    parser.add_argument("--line-bytes", type=int, default=4_000, help="memory input line size")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (median wins)")
    parser.add_argument(
        "--ssh",
        choices=("auto", "sim", "openssh"),
        default="auto",
        help="the SSH host: OpenSSH's sshd (what GPU machines run; auto when installed) or the "
        "asyncssh simulator",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the agent: collapsed stacks to this file"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return 0
    nginx = ensure_nginx()
    workdir = Path(tempfile.mkdtemp(prefix="neobatch-bench-dispatch-"))
    workdir.chmod(0o755)
    ssh = args.ssh
    if ssh == "auto":
        ssh = "openssh" if find_sshd() else "sim"
    stack = Stack(workdir, nginx, ssh=ssh)
    try:
        stack.start()
        if args.only in (None, "throughput"):
            t = measure_throughput(
                stack,
                nginx,
                args.requests,
                args.concurrency,
                rounds=args.rounds,
                profile=args.profile,
            )
            print_throughput(t, ssh)
        if args.only in (None, "memory"):
            m = measure_memory(stack, args.memory_requests, args.memory_small, args.line_bytes)
            print_memory(m)
    finally:
        stack.stop()
        if args.keep:
            print(f"\nlogs kept in {workdir}/logs")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
