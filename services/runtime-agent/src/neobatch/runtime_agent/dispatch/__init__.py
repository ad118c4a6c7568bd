"""How a batch's requests are sent: retry and concurrency policy, the pool, the tally. Pure.

`DispatchDefaults` is re-exported here because `settings.py` imports it from this path.
"""

from neobatch.runtime_agent.dispatch.policy import DispatchDefaults

__all__ = ["DispatchDefaults"]
