"""SSH host double: commands, background jobs, loopback-only forwards, key-only auth."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from neobatch.sim.ssh_host import start_ssh_host
from neobatch.sim.testing import servers
from neobatch.sim.testing.waiting import wait_until


def _connect(info: Any, client_keys: list, **overrides: Any) -> Any:
    options = {
        "username": info.username,
        "client_keys": client_keys,
        "known_hosts": info.known_hosts,
        "agent_path": None,
        "connect_timeout": 10,
        **overrides,
    }
    return asyncssh.connect(info.host, info.port, **options)


async def test_runs_command_with_stdout_stderr_and_exit_code(ssh_host, ssh_keypair) -> None:
    async with _connect(ssh_host, [ssh_keypair.private_key_path]) as conn:
        result = await conn.run("echo hello; echo oops >&2; pwd; exit 3")
        echoed = await conn.run("tr a-z A-Z", input="piped through stdin\n", check=True)
        home = await conn.run('printf %s "$HOME"', check=True)
    assert result.exit_status == 3
    assert result.stdout == f"hello\n{ssh_host.workdir}\n"
    assert result.stderr == "oops\n"
    assert echoed.stdout == "PIPED THROUGH STDIN\n"
    assert home.stdout == str(ssh_host.workdir)


async def test_large_output_is_not_truncated(ssh_host, ssh_keypair) -> None:
    async with _connect(ssh_host, [ssh_keypair.private_key_path]) as conn:
        result = await conn.run("head -c 3000000 /dev/zero | tr '\\0' x", check=True)
    assert result.stdout == "x" * 3_000_000


async def test_background_job_survives_the_session(ssh_host, ssh_keypair) -> None:
    marker = ssh_host.workdir / "job.out"
    go = ssh_host.workdir / "job.go"
    # The job waits for a file the test creates after the connection is closed.
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; echo done > {marker}"
    command = f"nohup sh -c '{script}' > job.log 2>&1 < /dev/null & echo $!"
    async with _connect(ssh_host, [ssh_keypair.private_key_path]) as conn:
        result = await asyncio.wait_for(conn.run(command, check=True), 10)
    pid = int(result.stdout.strip())
    os.kill(pid, 0)  # still running after the connection closed
    go.touch()
    await wait_until(marker.exists, 10, message="background job to write its marker")
    assert marker.read_text() == "done\n"


async def test_disconnect_hangs_up_foreground_command(ssh_host, ssh_keypair) -> None:
    async with _connect(ssh_host, [ssh_keypair.private_key_path]) as conn:
        process = await conn.create_process("echo $$; exec sleep 60")
        pid = int(await asyncio.wait_for(process.stdout.readline(), 10))
        os.kill(pid, 0)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await wait_until(gone, 10, message=f"sleep (pid {pid}) to die after disconnect")


async def test_forward_to_loopback_port_works(ssh_host, ssh_keypair) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target_port = server.sockets[0].getsockname()[1]
    try:
        async with _connect(ssh_host, [ssh_keypair.private_key_path]) as conn:
            listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", target_port)
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.get_port())
            writer.write(b"ping\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), 10) == b"ping\n"
            writer.close()
            for loopback in ("localhost", "127.0.0.1"):
                chan_reader, chan_writer = await conn.open_connection(loopback, target_port)
                chan_writer.write(b"direct\n")
                assert await asyncio.wait_for(chan_reader.readline(), 10) == b"direct\n"
                chan_writer.close()
            listener.close()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("destination", ["10.1.2.3", "192.0.2.10", "example.com", "::ffff:1.2.3.4"])
async def test_forward_to_non_loopback_is_refused(ssh_host, ssh_keypair, destination) -> None:
    async with _connect(ssh_host, [ssh_keypair.private_key_path]) as conn:
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await conn.open_connection(destination, 80)
    assert refused.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED


async def test_unauthorized_key_and_password_are_rejected(ssh_host, tmp_path) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        async with _connect(ssh_host, [stranger]):
            pass
    with pytest.raises(asyncssh.PermissionDenied):
        async with _connect(ssh_host, [], password="hunter2"):
            pass


async def test_wrong_pinned_host_key_is_refused(ssh_host, ssh_keypair) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    known = asyncssh.import_known_hosts(f"[{ssh_host.host}]:{ssh_host.port} {impostor}")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with _connect(ssh_host, [ssh_keypair.private_key_path], known_hosts=known):
            pass


async def test_in_process_host_with_key_list(ssh_keypair, tmp_path) -> None:
    host = await start_ssh_host(
        authorized_keys=[ssh_keypair.public_key], host_key=tmp_path / "hk", workdir=tmp_path
    )
    try:
        assert stat.S_IMODE((tmp_path / "hk").stat().st_mode) == 0o600
        async with asyncssh.connect(
            host.host,
            host.port,
            username="anyone",
            client_keys=[str(ssh_keypair.private_key_path)],
            known_hosts=host.known_hosts,
            agent_path=None,
        ) as conn:
            assert (await conn.run("echo $((6 * 7))", check=True)).stdout == "42\n"
    finally:
        await host.close()


async def test_cli_creates_host_key_and_rereads_authorized_keys(ssh_keypair, tmp_path) -> None:
    authorized = tmp_path / "authorized_keys"
    authorized.write_text("")
    host_key = tmp_path / "host_key"
    port = servers.free_port()
    args = ["--port", str(port), "--authorized-keys", str(authorized), "--host-key", str(host_key)]
    process = servers.start_python_module(
        "neobatch.sim.ssh_host", [*args, "--workdir", str(tmp_path)], log_path=tmp_path / "log"
    )
    try:
        await asyncio.to_thread(servers.wait_port, "127.0.0.1", port, 20, process)
        assert stat.S_IMODE(host_key.stat().st_mode) == 0o600
        pinned = asyncssh.read_private_key(host_key).export_public_key().decode().split()[:2]
        known = asyncssh.import_known_hosts(f"[127.0.0.1]:{port} {' '.join(pinned)}")
        options = {
            "username": "u",
            "client_keys": [str(ssh_keypair.private_key_path)],
            "known_hosts": known,
            "agent_path": None,
        }
        with pytest.raises(asyncssh.PermissionDenied):
            async with asyncssh.connect("127.0.0.1", port, **options):
                pass
        authorized.write_text(ssh_keypair.public_key + "\n")
        async with asyncssh.connect("127.0.0.1", port, **options) as conn:
            result = await conn.run("pwd", check=True)
        assert Path(result.stdout.strip()) == tmp_path
    finally:
        process.stop()


async def test_two_machines_on_one_port_each_reach_their_own_engine(ssh_keypair, tmp_path) -> None:
    """Issue 15: simulated cloud machines of one batch all run the template's engine port; each
    has a loopback address of its own, and a forward to its 127.0.0.1 reaches that address."""

    def answering(name: bytes) -> Any:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(name + b"\n")
            await writer.drain()
            writer.close()

        return answer

    first = await asyncio.start_server(answering(b"first"), "127.42.0.1", 0)
    port = first.sockets[0].getsockname()[1]
    second = await asyncio.start_server(answering(b"second"), "127.42.0.2", port)
    hosts = [
        await start_ssh_host(
            authorized_keys=[ssh_keypair.public_key],
            workdir=tmp_path,
            loopback_address=address,
        )
        for address in ("127.42.0.1", "127.42.0.2")
    ]
    try:
        answers = []
        for host in hosts:
            async with asyncssh.connect(
                host.host,
                host.port,
                username="u",
                client_keys=[str(ssh_keypair.private_key_path)],
                known_hosts=host.known_hosts,
                agent_path=None,
            ) as conn:
                reader, writer = await conn.open_connection("127.0.0.1", port)
                writer.write(b"who\n")
                answers.append(await asyncio.wait_for(reader.readline(), 10))
        assert answers == [b"first\n", b"second\n"]
    finally:
        for host in hosts:
            await host.close()
        for server in (first, second):
            server.close()
            await server.wait_closed()
