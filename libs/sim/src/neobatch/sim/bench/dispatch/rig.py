"""What the agent runs against besides the engine: SecantusDB and an SSH host, in a temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from neobatch.sim.bench.dispatch.agent import AgentJob
from neobatch.sim.bench.dispatch.nginx import Nginx, write_nginx
from neobatch.sim.testing import servers


def find_sshd() -> str | None:
    """OpenSSH's server, the SSH host a rented GPU machine runs."""
    found = shutil.which("sshd") or "/usr/sbin/sshd"
    return found if os.path.exists(found) else None


class BenchRig:
    """SecantusDB, an SSH host on loopback and the nginx engine's config, in a temp dir."""

    def __init__(
        self, workdir: Path, nginx: Nginx | None, ssh: str = "sim", on_disk: bool = False
    ) -> None:
        # nginx None: no engine config (the engine bench brings its own engine).
        self.workdir = workdir
        self.nginx = nginx
        self.ssh = ssh
        # The database in memory, unless the bench writes more than its cache holds (the scale
        # bench at 1,000,000 requests hit WT_CACHE_FULL at ~430,000): then on disk, as deployed.
        self.storage = str(workdir / "db") if on_disk else ":memory:"
        self.processes: list[Any] = []

    def start(self) -> None:
        import asyncssh

        from neobatch.sim.ssh_host import public_key_line, write_private_key

        w = self.workdir
        (w / "logs").mkdir(parents=True, exist_ok=True)
        mongo_port = servers.free_port()
        self.processes.append(
            servers.start_mongo(mongo_port, self.storage, w / "logs/secantus.log")
        )
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
        if self.nginx is not None:
            self.engine_command = write_nginx(self.nginx, w / "nginx", self.engine_port)

    def _start_sshd(self, authorized: Path) -> Any:
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
