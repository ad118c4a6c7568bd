"""``python -m neobatch.sim.demo``: the demo batch of ``./task up`` (``neobatch.sim.devstack.demo``).

Kept at this path because ``./task up``, ``./task demo`` and the README run it by this name.
"""

import sys

from neobatch.sim.devstack.demo_cli import main

if __name__ == "__main__":
    sys.exit(main())
