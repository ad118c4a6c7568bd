"""``python -m neobatch.sim.devstack up|down|status`` (see ``cli.py``)."""

import sys

from neobatch.sim.devstack.cli import main

if __name__ == "__main__":
    sys.exit(main())
