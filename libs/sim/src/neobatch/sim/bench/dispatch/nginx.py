"""The engine of the dispatch bench: nginx with the echo module answering a fixed chat reply."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from neobatch.sim.testing import servers

MODEL = "bench-model"
CHAT = "/v1/chat/completions"
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


class DirectEngine:
    """nginx started here (not through the agent) for the direct load generator."""

    def __init__(self, nginx: Nginx, prefix: Path) -> None:
        self.port = servers.free_port()
        command = write_nginx(nginx, prefix, self.port)
        self.process = servers.ManagedProcess(command, prefix / "stdout.log", name="nginx")
        servers.wait_port("127.0.0.1", self.port, 10, process=self.process)

    def stop(self) -> None:
        self.process.stop()
