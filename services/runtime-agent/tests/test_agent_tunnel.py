"""The OpenSSH data path (tunnel.py) against the loopback SSH host and a real `ssh` client.

Every test here runs the real `ssh` binary against the asyncssh host simulator, with an HTTP
server on loopback behind it; they are skipped where no OpenSSH client is installed.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncssh
import pytest
from aiohttp import web

from neobatch.common.contracts import SshEndpoint
from neobatch.common.errors import ConfigError
from neobatch.runtime_agent.engine.http import EngineHTTP
from neobatch.runtime_agent.machine import tunnel
from neobatch.runtime_agent.machine.errors import HostKeyMismatch, HostUnreachable
from neobatch.runtime_agent.machine.remote import RemoteHost, connect, load_client_key
from neobatch.runtime_agent.settings import read_settings
from neobatch.sim.procs import is_running
from neobatch.sim.ssh_host import public_key_line, start_ssh_host, write_private_key
from neobatch.sim.testing.servers import free_port
from neobatch.sim.testing.waiting import wait_until

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client (ssh)")


def process_exists(pid: int) -> bool:
    """Any trace left, a zombie included (not reaped)."""
    return Path(f"/proc/{pid}").exists()


@pytest.fixture
def private_tmp(monkeypatch) -> Iterator[Path]:
    """A short, per-test temp dir for the tunnels' private dirs (sun_path is 108 bytes).

    Its name holds a `%`, which ssh would expand as a token if the argv did not escape it.
    """
    base = Path(tempfile.mkdtemp(prefix="nbt%h-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def http_server() -> AsyncIterator[int]:
    """An HTTP server on loopback (the engine behind the tunnel); yields its port."""
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path, "via": "engine"})

    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield port
    await runner.cleanup()


@pytest.fixture
async def machine(ssh_keypair) -> AsyncIterator[SshEndpoint]:
    """A loopback SSH host on the test's own loop (so a test can replace it)."""
    ssh = await start_ssh_host("127.0.0.1", 0, [ssh_keypair.public_key])
    yield SshEndpoint(
        host=ssh.host,
        port=ssh.port,
        username=getpass.getuser(),
        host_public_key=ssh.host_public_key,
    )
    await ssh.close()


@pytest.fixture
def client_key(ssh_keypair) -> asyncssh.SSHKey:
    return load_client_key(str(ssh_keypair.private_key_path))


async def get_json(base_url: str, path: str) -> dict:
    assert base_url.startswith("unix:"), base_url
    connector = aiohttp.UnixConnector(path=base_url.removeprefix("unix:"))
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.get(f"http://engine{path}") as resp,
    ):
        assert resp.status == 200
        return await resp.json()


async def open_host(target: SshEndpoint, key: asyncssh.SSHKey, **kw) -> RemoteHost:
    return await connect(
        target, key, target.host_public_key, connect_timeout_seconds=5, tunnel="openssh", **kw
    )


# --- pure parts -------------------------------------------------------------------------------


def argv_for(target: SshEndpoint, **overrides: object) -> list[str]:
    """`tunnel.ssh_argv` with a typical private dir; `overrides` replace its arguments."""
    args: dict[str, object] = {
        "socket_path": "/tmp/d/engine.sock",
        "remote_port": 8000,
        "key_file": "/tmp/d/id",
        "known_hosts_file": "/tmp/d/known_hosts",
        "host_public_key": "ssh-ed25519 AAAA",
        "connect_timeout_seconds": 5,
        **overrides,
    }
    return tunnel.ssh_argv("/usr/bin/ssh", target, **args)  # type: ignore[arg-type]


def test_argv_pins_the_key_and_carries_no_secret() -> None:
    target = SshEndpoint(host="10.0.0.5", port=2200, username="ubuntu")
    argv = argv_for(target, host_public_key="ssh-ed25519 AAAAC3Nza", connect_timeout_seconds=2.5)
    assert argv[:4] == ["/usr/bin/ssh", "-N", "-F", "/dev/null"]
    options = {argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"}
    for expected in (
        "IdentityFile=/tmp/d/id",
        "IdentitiesOnly=yes",
        "BatchMode=yes",
        "ExitOnForwardFailure=yes",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/tmp/d/known_hosts",
        "GlobalKnownHostsFile=/dev/null",
        "HostKeyAlgorithms=ssh-ed25519",
        "ServerAliveInterval=15",
        "ServerAliveCountMax=3",
        "ConnectTimeout=3",
        f"Ciphers={tunnel.CIPHERS}",
        "LogLevel=ERROR",
        "StreamLocalBindUnlink=yes",
    ):
        assert expected in options
    assert tunnel.CIPHERS.startswith("aes128-gcm@openssh.com,")
    assert argv[-6:] == [
        "-L",
        "/tmp/d/engine.sock:127.0.0.1:8000",
        "-p",
        "2200",
        "--",
        "ubuntu@10.0.0.5",
    ]
    assert not any("AAAAC3Nza" in arg for arg in argv)  # the key goes in the file, not the argv


@pytest.mark.parametrize(
    ("username", "host"),
    [
        ("-oProxyCommand=touch /tmp/x", "10.0.0.5"),
        ("ubuntu", "-oProxyCommand=sh"),
        ("ubuntu", "evil@10.0.0.5"),
        ("ubu ntu", "10.0.0.5"),
        ("ubuntu", "10.0.0.5\n"),
    ],
)
def test_a_destination_that_reads_as_an_option_is_refused(username, host) -> None:
    target = SshEndpoint(host=host, port=22, username=username)
    with pytest.raises(tunnel.TunnelFailed, match="not a plain name"):
        argv_for(target)


def test_percent_in_a_path_stays_literal() -> None:
    target = SshEndpoint(host="10.0.0.5", port=22, username="ubuntu")
    argv = argv_for(
        target,
        socket_path="/tmp/a%h/engine.sock",
        key_file="/keys/%u",
        known_hosts_file="/tmp/a%h/known_hosts",
    )
    assert "IdentityFile=/keys/%%u" in argv
    assert "/tmp/a%%h/engine.sock:127.0.0.1:8000" in argv
    assert "UserKnownHostsFile=/tmp/a%%h/known_hosts" in argv


def test_known_hosts_line_and_algorithms() -> None:
    key = "ssh-ed25519 AAAAkey comment"
    assert tunnel.known_hosts_line("1.2.3.4", 2222, key) == "[1.2.3.4]:2222 ssh-ed25519 AAAAkey\n"
    # OpenSSH looks port 22 up under the bare host name.
    assert tunnel.known_hosts_line("1.2.3.4", 22, key) == "1.2.3.4 ssh-ed25519 AAAAkey\n"
    assert tunnel.host_key_algorithms("ssh-rsa AAAA") == "rsa-sha2-512,rsa-sha2-256"
    assert tunnel.host_key_algorithms("ecdsa-sha2-nistp256 AAAA") == "ecdsa-sha2-nistp256"


def test_modes_and_setting(ssh_keypair, monkeypatch) -> None:
    assert tunnel.resolve_mode("openssh") == "openssh"
    assert tunnel.resolve_mode("asyncssh") == "asyncssh"
    with pytest.raises(ConfigError, match="NEOBATCH_SSH_TUNNEL"):
        tunnel.resolve_mode("ssh")
    expected = "openssh" if shutil.which("ssh") else "asyncssh"
    assert tunnel.resolve_mode("auto") == expected

    env = {"NEOBATCH_SSH_KEY_FILE": str(ssh_keypair.private_key_path)}
    assert read_settings(env).ssh_tunnel == "auto"
    assert read_settings({**env, "NEOBATCH_SSH_TUNNEL": "AsyncSSH"}).ssh_tunnel == "asyncssh"
    with pytest.raises(ConfigError, match="NEOBATCH_SSH_TUNNEL"):
        read_settings({**env, "NEOBATCH_SSH_TUNNEL": "plink"})
    monkeypatch.setenv("PATH", "/nonexistent")
    assert tunnel.resolve_mode("auto") == "asyncssh"  # no ssh: the in-process forward
    with pytest.raises(ConfigError, match="not on PATH"):
        read_settings({**env, "NEOBATCH_SSH_TUNNEL": "openssh"})


# --- the real ssh client ------------------------------------------------------------------------


@needs_ssh
async def test_forward_serves_http_over_a_private_unix_socket(
    machine, client_key, http_server, private_tmp
) -> None:
    host = await open_host(machine, client_key)  # key only in memory: written into the dir
    try:
        base_url = await host.forward(http_server)
        assert await get_json(base_url, "/v1/models") == {"path": "/v1/models", "via": "engine"}
        (opened,) = host._tunnels
        sock = Path(opened.socket_path)
        private_dir = sock.parent
        assert base_url == f"unix:{sock}" and private_dir.parent == private_tmp
        assert stat.S_IMODE(private_dir.stat().st_mode) == 0o700
        assert stat.S_ISSOCK(sock.stat().st_mode)
        key_file = private_dir / "id"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert load_client_key(str(key_file)).public_data == client_key.public_data
        known = (private_dir / "known_hosts").read_text()
        assert known == f"[127.0.0.1]:{machine.port} {machine.host_public_key}\n"
        # The command line names files only: no key material, private or public.
        cmdline = Path(f"/proc/{opened.pid}/cmdline").read_bytes().decode()
        secret = client_key.export_private_key("openssh").decode().splitlines()[1]
        assert secret not in cmdline and machine.host_public_key.split()[1] not in cmdline
        assert f"IdentityFile={key_file}\0".replace("%", "%%") in cmdline
        assert not host.tunnel_down
        pid = opened.pid
    finally:
        await host.close()
    # Closed: ssh terminated and reaped (no zombie), socket and private dir gone.
    assert not process_exists(pid)
    assert not private_dir.exists()
    assert host.tunnel_down


@needs_ssh
async def test_a_key_file_is_used_in_place(
    machine, ssh_keypair, client_key, http_server, private_tmp
) -> None:
    host = await open_host(machine, client_key, key_file=str(ssh_keypair.private_key_path))
    try:
        base_url = await host.forward(http_server)
        assert (await get_json(base_url, "/health"))["via"] == "engine"
        (opened,) = host._tunnels
        assert sorted(p.name for p in Path(opened.socket_path).parent.iterdir()) == [
            "engine.sock",
            "known_hosts",
        ]
        cmdline = Path(f"/proc/{opened.pid}/cmdline").read_bytes().decode()
        assert f"\0IdentityFile={ssh_keypair.private_key_path}\0" in cmdline
    finally:
        await host.close()


@needs_ssh
async def test_the_tunnel_survives_a_refused_connection(
    machine, client_key, private_tmp, http_server
) -> None:
    """An engine not listening yet (booting) refuses a forwarded connection; ssh stays up."""
    host = await open_host(machine, client_key)
    port = free_port()
    try:
        base_url = await host.forward(port)
        with pytest.raises(aiohttp.ClientError):
            await get_json(base_url, "/health")

        # The engine comes up on that port: the same tunnel now reaches it.
        async def health(_: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            assert await get_json(base_url, "/health") == {"ok": True}
        finally:
            await runner.cleanup()
        assert not host.tunnel_down and len(host._tunnels) == 1
    finally:
        await host.close()


@needs_ssh
async def test_a_killed_ssh_reads_as_tunnel_down_and_forward_starts_a_fresh_one(
    machine, client_key, http_server, private_tmp
) -> None:
    host = await open_host(machine, client_key)
    try:
        first = await host.forward(http_server)
        (opened,) = host._tunnels
        os.kill(opened.pid, signal.SIGKILL)
        await wait_until(lambda: host.tunnel_down, 10, message="the dead ssh to read as down")
        assert not host.is_closed  # only the data path went; the control connection is fine
        with pytest.raises(aiohttp.ClientError):
            await get_json(first, "/x")
        # The reconnect path forwards again: the dead tunnel is let go of, a new one starts.
        second = await host.forward(http_server)
        assert second != first and not host.tunnel_down
        assert (await get_json(second, "/y"))["path"] == "/y"
        assert not Path(first.removeprefix("unix:")).parent.exists()
        assert not process_exists(opened.pid)  # reaped
    finally:
        await host.close()


@needs_ssh
async def test_a_dropped_connection_takes_the_tunnel_down(
    ssh_keypair, client_key, http_server, private_tmp
) -> None:
    ssh = await start_ssh_host("127.0.0.1", 0, [ssh_keypair.public_key])
    target = SshEndpoint(
        host=ssh.host,
        port=ssh.port,
        username=getpass.getuser(),
        host_public_key=ssh.host_public_key,
    )
    host = await open_host(target, client_key)
    try:
        await host.forward(http_server)
        assert await ssh.drop_connections() == 2  # asyncssh's control connection and ssh's
        await wait_until(lambda: host._tunnels[0].is_down, 10, message="ssh to exit")
        assert host.tunnel_down
    finally:
        await host.close()
        await ssh.close()


@needs_ssh
async def test_another_host_key_is_refused(
    ssh_keypair, client_key, http_server, private_tmp
) -> None:
    """The machine at the pinned address now presents another key: the tunnel refuses it."""
    ssh = await start_ssh_host("127.0.0.1", 0, [ssh_keypair.public_key])
    port = ssh.port
    target = SshEndpoint(
        host=ssh.host, port=port, username=getpass.getuser(), host_public_key=ssh.host_public_key
    )
    host = await open_host(target, client_key)
    await ssh.close()
    impostor = await start_ssh_host("127.0.0.1", port, [ssh_keypair.public_key])
    try:
        assert impostor.host_public_key != host.host_public_key
        with pytest.raises(HostKeyMismatch, match="Host key verification failed") as caught:
            await host.forward(http_server)
        assert isinstance(caught.value, tunnel.TunnelFailed)
        assert caught.value.code == "host_key_mismatch"
        assert host._tunnels == [] and list(private_tmp.iterdir()) == []  # nothing left behind
    finally:
        await host.close()
        await impostor.close()


@needs_ssh
async def test_an_unauthorized_key_fails_with_sshs_reason(
    machine, http_server, private_tmp, tmp_path
) -> None:
    """ssh exits before the socket is ready: TunnelFailed carries its stderr, no key material."""
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    write_private_key(stranger, tmp_path / "stranger")
    with pytest.raises(tunnel.TunnelFailed) as caught:
        await tunnel.open_tunnel(
            machine,
            http_server,
            host_public_key=machine.host_public_key,
            client_key=stranger,
            key_file=None,
            connect_timeout_seconds=5,
        )
    assert not isinstance(caught.value, HostKeyMismatch)
    assert caught.value.code == "ssh_tunnel_failed"
    assert "Permission denied" in caught.value.message
    assert public_key_line(stranger).split()[1] not in caught.value.message
    assert list(private_tmp.iterdir()) == []


@needs_ssh
async def test_nothing_listening_times_out_or_fails_within_the_deadline(
    client_key, http_server, private_tmp
) -> None:
    """A port with no SSH server: ssh exits (connection refused) well within the deadline."""
    target = SshEndpoint(host="127.0.0.1", port=free_port(), username=getpass.getuser())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(tunnel.TunnelFailed, match="Connection refused"):
        await tunnel.open_tunnel(
            target,
            http_server,
            host_public_key=public_key_line(client_key),
            client_key=client_key,
            key_file=None,
            connect_timeout_seconds=2,
            ready_timeout_seconds=5,
        )
    assert loop.time() - started < 5
    assert list(private_tmp.iterdir()) == []


@needs_ssh
async def test_close_kills_an_ssh_that_does_not_end_on_sigterm(
    machine, client_key, http_server, private_tmp, monkeypatch
) -> None:
    """A stopped ssh never acts on SIGTERM: close() kills it after the grace period, reaps it."""
    monkeypatch.setattr(tunnel, "CLOSE_GRACE_SECONDS", 0.3)
    opened = await tunnel.open_tunnel(
        machine,
        http_server,
        host_public_key=machine.host_public_key,
        client_key=client_key,
        key_file=None,
        connect_timeout_seconds=5,
    )
    os.kill(opened.pid, signal.SIGSTOP)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await opened.close()
    assert loop.time() - started >= 0.3  # waited out the grace period, then killed
    assert not process_exists(opened.pid)
    assert opened.is_down
    assert list(private_tmp.iterdir()) == []
    await opened.close()  # twice is harmless


_TUNNEL_OWNER = """
import asyncio, sys
from neobatch.common.contracts import SshEndpoint
from neobatch.runtime_agent.machine import tunnel
from neobatch.runtime_agent.engine.http import EngineHTTP
from neobatch.runtime_agent.machine.remote import load_client_key

async def main(host, port, user, host_key, key_file, remote_port):
    opened = await tunnel.open_tunnel(
        SshEndpoint(host=host, port=int(port), username=user), int(remote_port),
        host_public_key=host_key, client_key=load_client_key(key_file), key_file=key_file,
        connect_timeout_seconds=5,
    )
    print(opened.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


@needs_ssh
@pytest.mark.skipif(not tunnel.parent_death_guard(), reason="no setpriv (util-linux)")
async def test_an_agent_killed_outright_leaves_no_ssh_behind(
    machine, ssh_keypair, http_server, private_tmp
) -> None:
    """SIGKILL gives the agent no chance to close its tunnels: ssh must end on its own."""
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _TUNNEL_OWNER,
        machine.host,
        str(machine.port),
        machine.username,
        machine.host_public_key,
        str(ssh_keypair.private_key_path),
        str(http_server),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(private_tmp)},
    )
    try:
        assert owner.stdout is not None
        line = await asyncio.wait_for(owner.stdout.readline(), timeout=30)
        ssh_pid = int(line)
        assert is_running(ssh_pid)
        assert Path(f"/proc/{ssh_pid}/comm").read_text().strip() == "ssh"  # setpriv exec'd it
    finally:
        owner.kill()
        await owner.wait()
    await wait_until(lambda: not is_running(ssh_pid), 10, message="ssh outlived its agent")


def failing_first(monkeypatch, failures: int) -> list[int]:
    """`open_tunnel` fails as an ssh that lost its connection would, `failures` times."""
    real = tunnel.open_tunnel
    calls: list[int] = []

    async def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise tunnel.TunnelFailed("ssh tunnel exited before it was ready: Connection reset")
        return await real(*args, **kwargs)

    monkeypatch.setattr(tunnel, "open_tunnel", flaky)
    return calls


@needs_ssh
async def test_a_tunnel_that_fails_to_open_is_retried_while_the_machine_answers(
    machine, client_key, http_server, private_tmp, monkeypatch
) -> None:
    calls = failing_first(monkeypatch, 1)
    host = await open_host(machine, client_key)
    try:
        base_url = await host.forward(http_server)
        assert await get_json(base_url, "/v1/models") == {"path": "/v1/models", "via": "engine"}
    finally:
        await host.close()
    assert len(calls) == 2


@needs_ssh
async def test_a_tunnel_failing_after_the_connection_dropped_reads_as_unreachable(
    machine, client_key, http_server, private_tmp, monkeypatch
) -> None:
    """A blip during the reconnect: the caller resumes or reports the machine lost, no failure."""
    calls = failing_first(monkeypatch, 10)
    host = await open_host(machine, client_key)
    try:
        host._conn.close()
        await wait_until(lambda: host.is_closed, 5)
        with pytest.raises(HostUnreachable, match="connection lost while opening the tunnel"):
            await host.forward(http_server)
    finally:
        await host.close()
    assert len(calls) == 1  # not retried against a machine that is gone


@needs_ssh
async def test_a_burst_of_connections_through_the_tunnel_loses_none(
    machine, client_key, http_server, private_tmp
) -> None:
    """The agent opens up to its concurrency (256) connections at once. ssh's unix listener
    queues 128: the rest must connect again, not fail their first request."""
    host = await open_host(machine, client_key)
    base_url = await host.forward(http_server)
    answers: list[object] = []
    try:
        for _ in range(4):  # a fresh pool each time: 256 connects at once
            http = EngineHTTP(base_url, max_connections=256)
            try:
                answers += await asyncio.gather(
                    *(http.request("GET", f"/r{i}", timeout_seconds=30) for i in range(256)),
                    return_exceptions=True,
                )
            finally:
                await http.close()
    finally:
        await host.close()
    failures = [a for a in answers if isinstance(a, BaseException)]
    assert failures == []
    assert {a.status for a in answers} == {200}
