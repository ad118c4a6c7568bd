"""What vLLM prints when it dies at start-up (`--fail-at-start ERROR`) or mid-batch
(`--exit-after N`).

Shaped like vLLM 0.32's own output (process prefixes, its log format, the engine core's
traceback logged as ERROR lines, then the API server's wrapper `RuntimeError` pointing at the
root cause above), so the agent's picker is tested against what a real engine writes.
"""

from __future__ import annotations

import os
import sys
import time


def start_failure_log(error: str) -> str:
    """The log of an engine that failed at start with `error` (`ValueError: ...`)."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    core = f"(EngineCore pid={os.getpid()}) "
    api = f"(APIServer pid={os.getppid()}) "
    frames = [
        "Traceback (most recent call last):",
        '  File "/opt/vllm/v1/engine/core.py", line 1128, in run_engine_core',
        "    engine_core = EngineCoreProc(*args, engine_index=dp_rank, **kwargs)",
        '  File "/opt/vllm/v1/worker/cpu_worker.py", line 96, in init_device',
        "    raise ValueError(",
        error,
    ]
    lines = [
        f"{api}INFO {stamp} [api_utils.py:286] non-default args: {{'port': 8000}}",
        f"{core}INFO {stamp} [core.py:133] Initializing a V1 LLM engine (v0.32.0)",
        f"{core}ERROR {stamp} [core.py:1137] EngineCore failed to start.",
        *(f"{core}ERROR {stamp} [core.py:1137] {frame}" for frame in frames),
        f"{core}Process EngineCore:",
        *(f"{core}{frame}" for frame in frames),
        f"{api}Traceback (most recent call last):",
        f'{api}  File "/opt/vllm/entrypoints/openai/api_server.py", line 712, in run_server',
        f"{api}    async with build_async_engine_client(args) as engine_client:",
        f"{api}RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {}",
    ]
    return "\n".join(lines) + "\n"


def crash_log(error: str) -> str:
    """What vLLM prints when its engine core dies mid-serving (`--exit-after N`): the core's
    traceback ending in `error` (e.g. `RuntimeError: CUDA error: an illegal memory access was
    encountered`), then the API server noticing the dead engine."""
    stamp = time.strftime("%m-%d %H:%M:%S")
    core = f"(EngineCore pid={os.getpid()}) "
    api = f"(APIServer pid={os.getppid()}) "
    lines = [
        f"{core}ERROR {stamp} [core.py:842] EngineCore encountered a fatal error.",
        f"{core}ERROR {stamp} [core.py:842] Traceback (most recent call last):",
        f'{core}ERROR {stamp} [core.py:842]   File "/opt/vllm/v1/engine/core.py", line 833, '
        "in run_engine_core",
        f"{core}ERROR {stamp} [core.py:842]     engine_core.run_busy_loop()",
        f"{core}ERROR {stamp} [core.py:842] {error}",
        f"{api}ERROR {stamp} [async_llm.py:480] AsyncLLM output_handler failed.",
        f"{api}INFO {stamp} [launcher.py:99] Shutting down FastAPI HTTP server.",
    ]
    return "\n".join(lines) + "\n"


# What vLLM 0.32 answers every request with once its engine core died while the API server
# still runs (`EngineDeadError`, HTTP 500), until the server exits (at once, unless started with
# VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1); its /health says 503 meanwhile.
ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."


def first_time(once_file: str | None) -> bool:
    """False when `once_file` exists already (it is created otherwise): a relaunched engine
    started with the same file serves on."""
    if once_file is None:
        return True
    try:
        with open(once_file, "x"):
            return True
    except FileExistsError:
        return False


def die_serving(error: str, once_file: str | None) -> bool:
    """The engine core dies but the API server lives on (`--exit-mode dead`): print
    `crash_log` to stderr and return True (from now on every request gets vLLM's
    EngineDeadError 500); False when `once_file` says it died before."""
    if not first_time(once_file):
        return False
    sys.stderr.write(crash_log(error))
    sys.stderr.flush()
    return True


def exit_now(error: str, once_file: str | None) -> bool:
    """Die as a crashed engine: print `crash_log` to stderr and exit 1 at once (no cleanup,
    in-flight connections reset). With `once_file`: only when it does not exist yet (it is
    created first), so a relaunched engine serves on. Returns False when it did not die."""
    if not first_time(once_file):
        return False
    sys.stderr.write(crash_log(error))
    sys.stderr.flush()
    os._exit(1)
