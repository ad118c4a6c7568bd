"""`python -m neobatch.resource_manager`."""

from __future__ import annotations

import asyncio
import sys

from neobatch.common.errors import ConfigError
from neobatch.common.logs import configure_logging
from neobatch.resource_manager.app import build
from neobatch.resource_manager.settings import read_settings


def main() -> None:
    try:
        settings = read_settings()
    except ConfigError as error:
        sys.exit(str(error))
    configure_logging("resource-manager", settings.common.log_level)
    asyncio.run(build(settings).run())


if __name__ == "__main__":
    main()
