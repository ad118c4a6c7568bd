"""``vllm``: ``vllm serve`` execs the engine simulator with the model and port it was given, or on
a machine installed with ``real_engine_python`` the real engine (vLLM's CPU build) with the same
arguments: ``<python> -m vllm.entrypoints.openai.api_server --model <model> [args]``, the wrapper
that build needs (its ``vllm`` console script fails: it asks for the distribution ``vllm``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from neobatch.sim.machine_tools.machine import ENGINE_MODULE, REAL_ENGINE_MODULE, record

# vLLM flags that take no value (everything else starting with -- is taken to take one).
_VLLM_SWITCHES = frozenset(
    {
        "--enforce-eager",
        "--trust-remote-code",
        "--disable-log-requests",
        "--disable-log-stats",
        "--disable-uvicorn-access-log",
        "--no-disable-uvicorn-access-log",
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--no-enable-prompt-tokens-details",
        "--enable-chunked-prefill",
        "--enable-lora",
        "--enable-auto-tool-choice",
        "--disable-custom-all-reduce",
    }
)


_CACHE_FLAGS = ("--enable-prefix-caching", "--enable-prompt-tokens-details")


def vllm_options(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--flag value`` / ``--flag=value`` pairs (first value kept) and the positionals."""
    options: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token.partition("=")
            if not eq and name not in _VLLM_SWITCHES and i + 1 < len(args):
                if not args[i + 1].startswith("--"):
                    value = args[i + 1]
                    i += 1
            options.setdefault(name, value)
        else:
            positional.append(token)
        i += 1
    return options, positional


def engine_argv(cfg: dict[str, Any], port: int, vllm_args: list[str]) -> list[str] | str:
    """The engine's command line for these vLLM arguments, or an error message."""
    if cfg.get("real_engine_python"):
        return real_engine_argv(
            cfg["real_engine_python"], port, vllm_args, cfg.get("address") or "127.0.0.1"
        )
    options, positional = vllm_options(vllm_args)
    model = options.get("--model") or (positional[0] if positional else "")
    served = options.get("--served-model-name") or model
    if not served:
        return "error: the model is required (vllm serve MODEL or --model MODEL)"
    # The prefix cache switches reach the simulator (vLLM's own --block-size with them).
    passed = [flag for flag in _CACHE_FLAGS if options.get(flag, "no") in ("", "true", "True")]
    if "--block-size" in options:
        passed += ["--block-size", options["--block-size"]]
    return [
        cfg["python"], "-m", ENGINE_MODULE, "--host", cfg.get("address") or "127.0.0.1",
        "--port", str(port),
        "--model", served, *passed, *cfg.get("engine_args", []),
    ]  # fmt: skip


def real_engine_argv(
    python: str, port: int, vllm_args: list[str], address: str = "127.0.0.1"
) -> list[str] | str:
    """The real server with every vLLM argument as given: a leading model becomes ``--model``,
    and it listens on loopback ``port`` (appended: vLLM's parser keeps the last value, which is
    how a container's ``--host 0.0.0.0 --port 8000`` becomes the published loopback port)."""
    args = list(vllm_args)
    if args and not args[0].startswith("-"):
        args = ["--model", *args]
    if "--model" not in args and not any(a.startswith("--model=") for a in args):
        return "error: the model is required (vllm serve MODEL or --model MODEL)"
    return [python, "-m", REAL_ENGINE_MODULE, *args, "--host", address, "--port", str(port)]


def engine_env(cfg: dict[str, Any]) -> dict[str, str]:
    """The engine's environment: the session's, and for the real engine vLLM's cache where
    the machine was installed to keep it (``machine.real_engine_cache``)."""
    env = dict(os.environ)
    if cfg.get("real_engine_cache"):
        env.setdefault("VLLM_CACHE_ROOT", cfg["real_engine_cache"])
    return env


def vllm(cfg: dict[str, Any], args: list[str]) -> int:
    record(cfg, "vllm", ["vllm", *args])
    if args[:1] in (["--version"], ["-v"]):
        print("0.0.0+neobatch.sim")
        return 0
    if args[:1] != ["serve"]:
        print("usage: vllm serve MODEL [options]", file=sys.stderr)
        return 2
    options, _ = vllm_options(args[1:])
    try:
        port = int(options.get("--port") or 8000)
    except ValueError:
        print(f"error: invalid --port {options['--port']!r}", file=sys.stderr)
        return 2
    argv = engine_argv(cfg, port, args[1:])
    if isinstance(argv, str):
        print(argv, file=sys.stderr)
        return 2
    # Remembered so deleting the machine ends it; pid = the engine's after exec.
    (Path(cfg["state"]) / "procs" / str(os.getpid())).touch()
    sys.stdout.flush()
    os.execve(argv[0], argv, engine_env(cfg))
    return 0  # not reached
