"""``devstack status``: each component's pid, whether it runs, its port, and the console URL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from neobatch.sim import procs
from neobatch.sim.devstack.components import ALL_COMPONENTS
from neobatch.sim.devstack.layout import (
    DEV_API_KEY,
    DEV_OPERATOR_KEY,
    Ports,
    RunLayout,
    read_env_file,
)
from neobatch.sim.devstack.processes import read_pid, runs_component
from neobatch.sim.testing.servers import LOOPBACK


@dataclass(frozen=True)
class StatusRow:
    component: str
    pid: int | None
    alive: bool
    port: int | None


def collect_status(run_dir: Path, ports: Ports | None = None) -> tuple[list[StatusRow], str]:
    """Rows for every component plus the console URL, preferring the ports of the last `up`."""
    layout = RunLayout(run_dir)
    recorded = read_env_file(layout.stack_env)
    ports = ports or Ports.from_env()
    rows = []
    for name in ALL_COMPONENTS:
        pid = read_pid(layout, name)
        alive = pid is not None and procs.is_running(pid) and runs_component(name, pid)
        env_name = ports.env_name_for(name)
        port: int | None = ports.for_component(name)
        if env_name and recorded.get(env_name, "").isdigit():
            port = int(recorded[env_name])
        rows.append(StatusRow(name, pid, alive, port))
    console_url = recorded.get("NEOBATCH_CONSOLE_URL") or f"http://{LOOPBACK}:{ports.console}"
    return rows, console_url


def format_status(
    rows: Sequence[StatusRow],
    console_url: str,
    api_key: str = DEV_API_KEY,
    operator_key: str = DEV_OPERATOR_KEY,
) -> str:
    header = ("COMPONENT", "PID", "ALIVE", "PORT")
    table = [header] + [
        (
            row.component,
            str(row.pid) if row.pid is not None else "-",
            "yes" if row.alive else "no",
            str(row.port) if row.port is not None else "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in table
    ]
    # The operator key (models, templates) before them, for `grep NEOBATCH_OPERATOR_KEY`.
    lines.append(f"NEOBATCH_OPERATOR_KEY={operator_key}")
    # The last two lines are for scripts: `eval "$(./task status | tail -n 2)"` or grep.
    lines.append(f"NEOBATCH_CONSOLE_URL={console_url}")
    lines.append(f"NEOBATCH_API_KEY={api_key}")
    return "\n".join(lines)
