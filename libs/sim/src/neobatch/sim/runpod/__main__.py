"""``python -m neobatch.sim.runpod --port P [--time-factor F] [--real-engine-python PY]`` (API key
from ``SIM_API_KEY``)."""

from __future__ import annotations

from neobatch.sim.cloud.cli import parse, run
from neobatch.sim.runpod.server import start_runpod_sim


def main() -> None:
    args = parse("python -m neobatch.sim.runpod", None, lambda_options=False)
    run(
        start_runpod_sim,
        {"time_factor": args.time_factor, "real_engine_python": args.real_engine_python},
        args.host,
        args.port,
    )


if __name__ == "__main__":
    main()
