"""`python -m neobatch.console`: read settings, configure logging, serve HTTP."""

from __future__ import annotations

import uvicorn

from neobatch.common.logs import configure_logging
from neobatch.console.app import create_app
from neobatch.console.settings import read_settings


def main() -> None:
    settings = read_settings()
    configure_logging("console", settings.common.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        # Our JSON logging is already configured; uvicorn's own config would replace it.
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
