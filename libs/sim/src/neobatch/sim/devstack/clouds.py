"""The cloud-provider simulators in the local stack (``./task up PROVISIONER=runpod|lambdaCloud``).

For each cloud provider named in ``PROVISIONER`` (one or an ordered list) the stack starts that
provider's simulator as its own process and gives the resource-manager the provider's settings,
exactly as for the real API but pointing at loopback: a generated API key, the stack's SSH public
key (RunPod: ``RUNPOD_SSH_PUBLIC_KEY``; Lambda: registered in the simulator under the name in
``LAMBDA_CLOUD_SSH_KEYS``), the base URL, and for Lambda ``LAMBDA_CLOUD_SSH_PORT`` (see
``neobatch.sim.lambda_cloud.server``). Boot delays and rate limits are scaled by
``NEOBATCH_SIM_TIME_FACTOR`` (default 0.05: RunPod boots in 1.5 s, Lambda in 12 s).
``NEOBATCH_SIM_REAL_ENGINE_PYTHON`` (a vLLM CPU venv's python) makes the machines run the real
engine for ``vllm serve`` / ``docker run`` (``neobatch.sim.real_engine``).

Ports (``NEOBATCH_RUNPOD_SIM_PORT`` 8180, ``NEOBATCH_LAMBDA_SIM_PORT`` 8181,
``NEOBATCH_LAMBDA_SSH_PORT`` 2200) are the stack's ``Ports``, read from the environment like
its other ports, checked free and recorded in stack.env (``start_stack``'s ``extra_env`` may
name them too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from neobatch.sim.devstack.layout import Ports

RUNPOD_SIM = "runpod-sim"
LAMBDA_SIM = "lambda-sim"
SIM_MODULES = {RUNPOD_SIM: "neobatch.sim.runpod", LAMBDA_SIM: "neobatch.sim.lambda_cloud"}
SUPPORTED_PROVISIONERS = ("ssh", "runpod", "lambdaCloud")
LAMBDA_KEY_NAME = "neobatch-dev"
DEFAULT_TIME_FACTOR = "0.05"
# A vLLM CPU venv's python (``neobatch.sim.real_engine``): the simulated machines' ``vllm serve``
# and ``docker run`` then start the real engine instead of the simulator.
REAL_ENGINE_ENV = "NEOBATCH_SIM_REAL_ENGINE_PYTHON"


@dataclass(frozen=True)
class SimSpec:
    name: str
    module: str
    port: int
    args: list[str]
    env: dict[str, str]  # the simulator's own environment additions


def provisioners(env: Mapping[str, str]) -> list[str]:
    raw = env.get("PROVISIONER", "").strip() or "ssh"
    return [part.strip() for part in raw.split(",") if part.strip()]


def _api_key(run_dir: Path, provider: str) -> str:
    # Stable per run dir, so a restarted resource-manager and the simulator keep agreeing.
    return "sim_" + hashlib.sha256(f"{run_dir}:{provider}".encode()).hexdigest()[:32]


def cloud_sims(
    env: Mapping[str, str], ports: Ports, run_dir: Path, public_key_path: Path
) -> tuple[list[SimSpec], dict[str, str]]:
    """The simulators to start and the resource-manager settings that point at them."""
    factor = env.get("NEOBATCH_SIM_TIME_FACTOR", "").strip() or DEFAULT_TIME_FACTOR
    real_engine = env.get(REAL_ENGINE_ENV, "").strip()
    engine_args = ["--real-engine-python", real_engine] if real_engine else []
    # vLLM's own switches in the stack's environment (VLLM_*) reach the real engines the
    # simulated machines start (they inherit the simulator's environment).
    engine_env = {k: v for k, v in env.items() if k.startswith("VLLM_")} if real_engine else {}
    sims: list[SimSpec] = []
    settings: dict[str, str] = {}
    chosen = provisioners(env)
    if "runpod" in chosen:
        port = ports.runpod_sim
        key = _api_key(run_dir, "runpod")
        args = ["--port", str(port), "--time-factor", factor, *engine_args]
        sim_env = {**engine_env, "SIM_API_KEY": key}
        sims.append(SimSpec(RUNPOD_SIM, SIM_MODULES[RUNPOD_SIM], port, args, sim_env))
        settings |= {
            "RUNPOD_API_KEY": key,
            "RUNPOD_SSH_PUBLIC_KEY": public_key_path.read_text().strip(),
            "RUNPOD_BASE_URL": f"http://127.0.0.1:{port}",
        }
    if "lambdaCloud" in chosen:
        port = ports.lambda_sim
        ssh_port = ports.lambda_ssh
        key = _api_key(run_dir, "lambdaCloud")
        args = ["--port", str(port), "--time-factor", factor, "--ssh-port", str(ssh_port)]
        args += engine_args
        args += ["--ssh-key", f"{LAMBDA_KEY_NAME}={public_key_path}"]
        sim_env = {**engine_env, "SIM_API_KEY": key}
        sims.append(SimSpec(LAMBDA_SIM, SIM_MODULES[LAMBDA_SIM], port, args, sim_env))
        settings |= {
            "LAMBDA_CLOUD_API_KEY": key,
            "LAMBDA_CLOUD_SSH_KEYS": LAMBDA_KEY_NAME,
            "LAMBDA_CLOUD_BASE_URL": f"http://127.0.0.1:{port}/api/v1",
            "LAMBDA_CLOUD_SSH_PORT": str(ssh_port),
        }
    if sims:
        settings.setdefault(
            "NEOBATCH_RECONCILE_SECONDS", env.get("NEOBATCH_RECONCILE_SECONDS", "5")
        )
    return sims, settings
