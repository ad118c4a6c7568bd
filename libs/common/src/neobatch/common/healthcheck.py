"""`python -m neobatch.common.healthcheck [PATH] [--port-env NAME]`: a container HEALTHCHECK.

GETs http://127.0.0.1:<port><PATH> (default /healthz) and exits 0 on HTTP 200, 1 otherwise, so
images need no curl. The port comes from the environment variable NAME (default
NEOBATCH_HEALTH_PORT; the console uses NEOBATCH_CONSOLE_PORT).
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neobatch.common.healthcheck")
    parser.add_argument("path", nargs="?", default="/healthz")
    parser.add_argument("--port-env", default="NEOBATCH_HEALTH_PORT")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    port = os.environ.get(args.port_env, "").strip()
    if not port.isdigit() or int(port) == 0:
        print(f"healthcheck: {args.port_env} is not set to a port", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{port}{args.path}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=args.timeout) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"healthcheck: GET {url} failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
