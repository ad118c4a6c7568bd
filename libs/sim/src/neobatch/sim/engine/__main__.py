"""CLI: ``python -m neobatch.sim.engine --host 127.0.0.1 --port 8000 --model NAME``."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from neobatch.sim.engine.app import FAILURE_MODES, EngineConfig
from neobatch.sim.engine.oversize import TRANSFERS
from neobatch.sim.engine.replies import DEFAULT_MODEL
from neobatch.sim.engine.serving import running_engine
from neobatch.sim.engine.startup import start_failure_log


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m neobatch.sim.engine", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup-delay-seconds", type=float, default=0.0)
    parser.add_argument(
        "--failure-mode",
        choices=FAILURE_MODES,
        default="request",
        help="request: a request's body decides, every attempt fails alike (permanent); "
        "attempt: each attempt draws again by (seed, X-Request-Id, attempt) (transient)",
    )
    parser.add_argument("--status-429-rate", type=float, default=0.0)
    parser.add_argument("--retry-after-seconds", type=float, default=1.0)
    parser.add_argument("--hang-rate", type=float, default=0.0)
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    parser.add_argument(
        "--request-log", default=None, help="append one JSON line per answered API request"
    )
    parser.add_argument(
        "--oversize-rate",
        type=float,
        default=0.0,
        help="share of requests (decided by the request, as failure-mode request) answered "
        "with an --oversize-bytes body",
    )
    parser.add_argument("--oversize-bytes", type=int, default=50 * 1024 * 1024)
    parser.add_argument("--oversize-transfer", choices=TRANSFERS, default="length")
    parser.add_argument("--enable-prefix-caching", action="store_true")
    parser.add_argument(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="report usage.prompt_tokens_details.cached_tokens, as vLLM does",
    )
    parser.add_argument("--block-size", type=int, default=16, help="prefix cache block (words)")
    parser.add_argument("--cache-blocks", type=int, default=4096, help="prefix cache capacity")
    parser.add_argument(
        "--fail-at-start",
        default=None,
        metavar="ERROR",
        help="never serve: print vLLM's start-up failure ending in ERROR (e.g. 'ValueError: "
        "...') to stderr and exit 1",
    )
    parser.add_argument(
        "--exit-after",
        type=int,
        default=None,
        metavar="N",
        help="crash mid-batch: once N requests were answered, the next one makes the engine "
        "print a vLLM-like traceback ending in --exit-error to stderr and exit 1",
    )
    parser.add_argument(
        "--exit-error",
        default="RuntimeError: CUDA error: an illegal memory access was encountered",
    )
    parser.add_argument(
        "--exit-once-file",
        default=None,
        metavar="PATH",
        help="with --exit-after: crash only when PATH does not exist (it is created), so a "
        "relaunched engine serves on",
    )
    parser.add_argument(
        "--exit-mode",
        choices=("crash", "dead"),
        default="crash",
        help="with --exit-after: 'crash' exits at once; 'dead' is vLLM's engine core dying "
        "under a live API server: from then on every request gets its EngineDeadError 500 and "
        "/health 503, and the process stays up (VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1)",
    )
    parser.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="vLLM-shaped capacity: at most N requests run at once, the rest wait; /metrics "
        "then reports vLLM's running/waiting/KV-cache gauges",
    )
    args = parser.parse_args(argv)
    for flag in ("failure_rate", "status_429_rate", "hang_rate", "oversize_rate"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            parser.error(f"--{flag.replace('_', '-')} must be between 0 and 1")
    if args.failure_rate + args.status_429_rate + args.hang_rate > 1.0 and (
        args.failure_mode == "attempt"
    ):
        parser.error("the per-attempt fault rates add up to more than 1")
    if args.max_num_seqs is not None and args.max_num_seqs < 1:
        parser.error("--max-num-seqs must be at least 1")
    return args


MACHINE_WATCH_SECONDS = 0.2


async def _serve(args: argparse.Namespace) -> None:
    config = EngineConfig(
        model=args.model,
        latency_ms=args.latency_ms,
        failure_rate=args.failure_rate,
        seed=args.seed,
        startup_delay_seconds=args.startup_delay_seconds,
        failure_mode=args.failure_mode,
        status_429_rate=args.status_429_rate,
        retry_after_seconds=args.retry_after_seconds,
        hang_rate=args.hang_rate,
        hang_seconds=args.hang_seconds,
        request_log=args.request_log,
        oversize_rate=args.oversize_rate,
        oversize_bytes=args.oversize_bytes,
        oversize_transfer=args.oversize_transfer,
        prefix_caching=args.enable_prefix_caching,
        prompt_tokens_details=args.enable_prompt_tokens_details,
        block_size=args.block_size,
        cache_blocks=args.cache_blocks,
        max_num_seqs=args.max_num_seqs,
        exit_after=args.exit_after,
        exit_error=args.exit_error,
        exit_once_file=args.exit_once_file,
        exit_mode=args.exit_mode,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Graceful exit on SIGTERM (ManagedProcess.stop) as well as Ctrl-C.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # On a simulated cloud machine, "loopback" is the machine's own loopback address.
    host = args.host
    if host in ("127.0.0.1", "localhost") and os.environ.get("NEOBATCH_SIM_MACHINE_ADDRESS"):
        host = os.environ["NEOBATCH_SIM_MACHINE_ADDRESS"]
    home = os.environ.get("NEOBATCH_SIM_MACHINE_HOME")
    async with running_engine(host, args.port, config) as engine:
        print(f"engine sim listening on {engine.url} model={config.model}", flush=True)
        if home:
            # A simulated machine's engine dies with its machine (deleted, stopped, released),
            # however it was started, as a real machine's processes do.
            watch = asyncio.create_task(_stop_when_gone(home, stop))
        await stop.wait()
        if home:
            watch.cancel()


async def _stop_when_gone(home: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if not os.path.isdir(home):
            stop.set()
        await asyncio.sleep(MACHINE_WATCH_SECONDS)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.fail_at_start is not None:
        sys.stderr.write(start_failure_log(args.fail_at_start))
        sys.stderr.flush()
        raise SystemExit(1)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
