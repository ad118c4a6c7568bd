"""``python -m neobatch.sim.lambda_cloud --port P --ssh-port S [--ssh-key NAME=FILE]``."""

from __future__ import annotations

from pathlib import Path

from neobatch.sim.cloud.cli import parse, run
from neobatch.sim.lambda_cloud.server import start_lambda_sim


def main() -> None:
    args = parse("python -m neobatch.sim.lambda_cloud", None, lambda_options=True)
    keys = {}
    for item in args.ssh_key:
        name, _, path = item.partition("=")
        keys[name] = Path(path).read_text().strip()
    options = {"time_factor": args.time_factor, "ssh_port": args.ssh_port, "ssh_keys": keys}
    options["real_engine_python"] = args.real_engine_python
    run(start_lambda_sim, options, args.host, args.port)


if __name__ == "__main__":
    main()
