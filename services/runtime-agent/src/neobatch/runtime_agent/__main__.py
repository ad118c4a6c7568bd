"""`python -m neobatch.runtime_agent`: read settings, refuse a bad key file, run until signalled."""

from __future__ import annotations

import asyncio
import sys

from neobatch.common.errors import ConfigError
from neobatch.common.logs import configure_logging
from neobatch.runtime_agent.app import SERVICE, run_agent
from neobatch.runtime_agent.machine.remote import load_client_key
from neobatch.runtime_agent.settings import read_settings


def main() -> None:
    try:
        settings = read_settings()
        load_client_key(settings.ssh_key_file)  # Fail now, not on the first batch.
    except ConfigError as exc:
        print(f"{SERVICE}: configuration error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    configure_logging(SERVICE, settings.common.log_level)
    asyncio.run(run_agent(settings))


if __name__ == "__main__":
    main()
