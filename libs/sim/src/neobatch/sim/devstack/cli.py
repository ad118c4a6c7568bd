"""``python -m neobatch.sim.devstack up|down|status``: the local stack behind ``./task up``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from neobatch.sim.devstack.clouds import SUPPORTED_PROVISIONERS
from neobatch.sim.devstack.components import ALL_COMPONENTS
from neobatch.sim.devstack.demo import web_console_url
from neobatch.sim.devstack.layout import Ports, RunLayout, StackError, find_run_dir, stack_lock
from neobatch.sim.devstack.processes import DEFAULT_STOP_TIMEOUT, AdoptedProcess, running_pid
from neobatch.sim.devstack.stack import DEFAULT_START_TIMEOUT, Stack, start_stack
from neobatch.sim.devstack.status import collect_status, format_status


def _say(message: str) -> None:
    print(f"devstack: {message}", flush=True)


def _cmd_up(args: argparse.Namespace) -> int:
    provisioner = os.environ.get("PROVISIONER", "").strip() or "ssh"
    unknown = [p for p in provisioner.split(",") if p.strip() not in SUPPORTED_PROVISIONERS]
    if unknown:
        print(
            f"devstack: PROVISIONER={provisioner!r} is not supported by the local stack; "
            f"choose from {', '.join(SUPPORTED_PROVISIONERS)} (or an ordered list of them)",
            file=sys.stderr,
        )
        return 2
    layout = RunLayout(find_run_dir())
    ports = Ports.from_env()
    with stack_lock(layout):
        stack = start_stack(
            layout.root,
            ports,
            {"PROVISIONER": provisioner},
            timeout_seconds=args.timeout,
            adopt_running=True,
            report=_say,
        )
    _say(
        f"stack is up; console {stack.console_url} (API key {stack.api_key}, operator key "
        f"{stack.operator_key}); "
        f"logs in {layout.logs}; stop it with ./task down"
    )
    _say(f"web console: {web_console_url(stack.console_url)} (log in with either key)")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    layout = RunLayout(find_run_dir())
    if not layout.root.is_dir():
        print("devstack: nothing to stop")
        return 0
    with stack_lock(layout):
        stack = Stack(run_dir=layout.root, ports=Ports.from_env(), env={})
        for name in ALL_COMPONENTS:
            pid = running_pid(layout, name)
            if pid is not None:
                stack.processes[name] = AdoptedProcess(name, pid, layout.log_file(name))
            else:
                with contextlib.suppress(FileNotFoundError):
                    layout.pid_file(name).unlink()
        if not stack.processes:
            print("devstack: no stack components were running")
        stack.stop(args.timeout, report=_say)
    return 0


def _cmd_status(_args: argparse.Namespace) -> int:
    rows, console_url = collect_status(find_run_dir())
    print(format_status(rows, console_url))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neobatch.sim.devstack", description="Run the local neobatch stack."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start every component that is not running yet")
    up.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT,
        help="seconds to wait for each server and for the console's /healthz (default %(default)s)",
    )
    up.set_defaults(func=_cmd_up)
    down = commands.add_parser("down", help="stop the stack in reverse order")
    down.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_STOP_TIMEOUT,
        help="seconds between SIGTERM and SIGKILL per component (default %(default)s)",
    )
    down.set_defaults(func=_cmd_down)
    status = commands.add_parser("status", help="show components, pids and ports")
    status.set_defaults(func=_cmd_status)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except StackError as error:
        print(f"devstack: {error}", file=sys.stderr)
        return 1
