"""OpenAI-compatible engine simulator (stands in for vLLM): deterministic, fast, fault-injecting.

Run it with ``python -m neobatch.sim.engine --port P``; predict its replies with ``expected_body``.
"""

from neobatch.sim.engine.app import EngineConfig, build_app
from neobatch.sim.engine.oversize import is_oversize
from neobatch.sim.engine.replies import (
    DEFAULT_MODEL,
    SimResponse,
    compute_response,
    embedding_vector,
    expected_body,
)
from neobatch.sim.engine.serving import RunningEngine, run_engine, running_engine, start_engine

__all__ = [
    "DEFAULT_MODEL",
    "EngineConfig",
    "RunningEngine",
    "SimResponse",
    "build_app",
    "compute_response",
    "embedding_vector",
    "expected_body",
    "is_oversize",
    "run_engine",
    "running_engine",
    "start_engine",
]
