"""The local development stack: nats-server, SecantusDB, a loopback SSH host and the four services.

``python -m neobatch.sim.devstack up|down|status`` (``cli.py``) manages the stack behind
``./task up``; pid files, logs and data live under ``<repo>/.run/`` (or ``$NEOBATCH_RUN_DIR``,
``layout.py``). ``start_stack`` (``stack.py``) is the reusable part: end-to-end tests call it with
free ports and a temporary run dir. ``components.py`` says what runs and with which environment,
``clouds.py`` adds the cloud-provider simulators, ``processes.py`` finds the stack's processes by
pid, and ``status.py`` prints them. ``demo`` runs the demo batch of ``./task up``; ``scenario``
and ``sample_batch`` drive a running stack for tests and benchmarks.

Stopping: every component runs in its own session, so SIGTERM/SIGKILL go to its whole process
group. The SSH host, like sshd, gives each SSH session its own session too, and on SIGTERM hangs
up its sessions, which ends foreground commands. Engines the runtime-agent detaches (``setsid`` /
``nohup ... &``) survive that on purpose; the runtime-agent stops its engines itself. As a safety
net for a crashed agent, stopping the stack also ends every process still marked as the stack's
(``processes.sweep_marked``).

No pytest imports here: the CLI and the tests share this package.
"""

from neobatch.sim.devstack.components import SERVICE_MODULES
from neobatch.sim.devstack.layout import (
    DEV_API_KEY,
    DEV_OPERATOR_KEY,
    Ports,
    RunLayout,
    StackError,
)
from neobatch.sim.devstack.processes import marked_pids
from neobatch.sim.devstack.stack import Stack, start_stack

__all__ = [
    "DEV_API_KEY",
    "DEV_OPERATOR_KEY",
    "SERVICE_MODULES",
    "Ports",
    "RunLayout",
    "Stack",
    "StackError",
    "marked_pids",
    "start_stack",
]
