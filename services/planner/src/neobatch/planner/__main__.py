"""`python -m neobatch.planner`."""

from __future__ import annotations

import asyncio

from neobatch.common.logs import configure_logging
from neobatch.planner.app import build
from neobatch.planner.settings import read_settings


def main() -> None:
    settings = read_settings()
    configure_logging("planner", settings.common.log_level)
    asyncio.run(build(settings).run())


if __name__ == "__main__":
    main()
