"""Run one SSH session's command as a local ``/bin/sh -c`` child, sshd-style.

Why stdio is copied by hand rather than with ``process.redirect``: redirect followed by ``exit()``
races and loses the tail of stdout, and redirecting stdin into the child's StreamWriter leaks
``Queue.join`` warnings from asyncssh internals (library-notes section 5). So stdin is copied
manually and stdout/stderr are read to EOF before the exit status is sent.

If the client goes away mid-command the child's process group gets SIGHUP, as sshd does, so a
``nohup ... &`` job survives while a plain foreground command dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping

import asyncssh

from neobatch.sim.procs import signal_group

_CHUNK = 64 * 1024
_HANGUP_GRACE_SECONDS = 2.0


async def run_session(
    process: asyncssh.SSHServerProcess,
    workdir: str | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """asyncssh ``process_factory`` body: run the command, relay stdio, report its exit."""
    command = process.command
    argv = ["/bin/sh", "-c", command] if command is not None else ["/bin/sh"]
    try:
        child = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=workdir,
            env=_child_env(env or {}, process.env),
            # Own session per SSH session, like sshd: signals to the server do not reach it.
            start_new_session=True,
        )
    except OSError as exc:
        process.stderr.write(f"sh: {exc}\n".encode())
        process.exit(127)
        return

    stdin_task = asyncio.ensure_future(_copy_stdin(process, child))
    output = asyncio.gather(
        _pump(child.stdout, process.stdout), _pump(child.stderr, process.stderr)
    )
    closed = asyncio.ensure_future(process.wait_closed())
    try:
        done, _ = await asyncio.wait({output, closed}, return_when=asyncio.FIRST_COMPLETED)
        if output in done:
            output.result()
            _send_exit(process, await child.wait())
    finally:
        for task in (stdin_task, output, closed):
            task.cancel()
        if child.returncode is None:
            await _hang_up(child)


def _child_env(
    server_env: Mapping[str, str], client_env: Mapping[object, object]
) -> dict[str, str]:
    env = {**os.environ, **server_env}
    # asyncssh may hand back bytes when the server runs with encoding=None.
    for key, value in client_env.items():
        env[os.fsdecode(key)] = os.fsdecode(value)  # type: ignore[arg-type]
    return env


async def _copy_stdin(
    process: asyncssh.SSHServerProcess, child: asyncio.subprocess.Process
) -> None:
    assert child.stdin is not None
    try:
        while True:
            try:
                data = await process.stdin.read(_CHUNK)
            except asyncssh.SignalReceived as exc:
                # `process.send_signal("TERM")` from the client reaches the whole command.
                signal_group(child.pid, _signal_from_name(exc.signal))
                continue
            except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged):
                continue
            if not data:
                break
            child.stdin.write(data)
            await child.stdin.drain()
    except (BrokenPipeError, ConnectionError):
        pass  # The child stopped reading stdin; that is its business.
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            child.stdin.close()


async def _pump(reader: asyncio.StreamReader | None, writer: asyncssh.SSHWriter) -> None:
    assert reader is not None
    channel_open = True
    while data := await reader.read(_CHUNK):
        if not channel_open:
            continue  # Keep draining so the child never blocks on a full pipe.
        try:
            writer.write(data)
            await writer.drain()
        except (BrokenPipeError, ConnectionError, asyncssh.Error):
            channel_open = False


def _send_exit(process: asyncssh.SSHServerProcess, returncode: int) -> None:
    if returncode >= 0:
        process.exit(returncode)
    else:
        process.exit_with_signal(signal.Signals(-returncode).name.removeprefix("SIG"))


async def _hang_up(child: asyncio.subprocess.Process) -> None:
    signal_group(child.pid, signal.SIGHUP)
    try:
        await asyncio.wait_for(asyncio.shield(child.wait()), _HANGUP_GRACE_SECONDS)
    except TimeoutError:
        # Only the shell itself: background jobs in its group may be meant to outlive us.
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


def _signal_from_name(name: str) -> int:
    try:
        return signal.Signals["SIG" + name.upper().removeprefix("SIG")]
    except KeyError:
        return signal.SIGTERM
