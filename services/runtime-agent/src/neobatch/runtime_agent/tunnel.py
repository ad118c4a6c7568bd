"""Where `settings.py` finds the tunnel-mode checks; the tunnel itself is `machine.tunnel`.

Only `settings.py` imports this path (its contents are owned by the settings rewrite of issue 12).
Delete this module once settings imports `neobatch.runtime_agent.machine.tunnel` directly.
"""

from neobatch.runtime_agent.machine.tunnel import check_mode, ssh_binary

__all__ = ["check_mode", "ssh_binary"]
