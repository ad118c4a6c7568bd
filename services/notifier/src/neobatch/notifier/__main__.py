"""`python -m neobatch.notifier`."""

from __future__ import annotations

import asyncio
import sys

from neobatch.common.errors import ConfigError
from neobatch.common.logs import configure_logging
from neobatch.notifier.app import build
from neobatch.notifier.handlers import SERVICE
from neobatch.notifier.settings import read_settings


def main() -> None:
    try:
        settings = read_settings()
    except ConfigError as exc:
        print(f"{SERVICE}: configuration error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    configure_logging(SERVICE, settings.common.log_level)
    asyncio.run(build(settings).run())


if __name__ == "__main__":
    main()
