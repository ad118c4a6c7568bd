"""Builders shared by the runtime-agent tests (imported by path; importlib mode)."""

from __future__ import annotations

import sys
import uuid
from datetime import datetime
from typing import Any

from neobatch.common.contracts import BatchRequested, EngineSpec, SshEndpoint
from neobatch.sim.servers import free_port

MODEL = "sim-model"
CHAT = "/v1/chat/completions"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def sim_engine_spec(
    *, port: int | None = None, extra_args: list[str] | None = None, ready_timeout: float = 30.0
) -> EngineSpec:
    """An engine spec whose template command launches the engine simulator on the host."""
    command = [sys.executable, "-m", "neobatch.sim.engine", "--host", "127.0.0.1"]
    command += ["--port", "{port}", "--model", "{model}", *(extra_args or [])]
    return EngineSpec(
        serving_name=MODEL,
        model_uri="sim://model",
        command=command,
        port=port or free_port(),
        ready_timeout_seconds=ready_timeout,
    )


def target_for(ssh_host: Any, *, pin: bool = False) -> SshEndpoint:
    return SshEndpoint(
        host=ssh_host.host,
        port=ssh_host.port,
        username=ssh_host.username,
        host_public_key=ssh_host.host_public_key if pin else None,
    )


def batch_requested(
    *,
    batch_id: str,
    input_file_id: str,
    target: SshEndpoint,
    engine: EngineSpec,
    expires_at: datetime | None = None,
) -> BatchRequested:
    return BatchRequested(
        batch_id=batch_id,
        job_id=f"job_{uuid.uuid4().hex}",
        provision_id=f"prov_{uuid.uuid4().hex}",
        input_file_id=input_file_id,
        endpoint=CHAT,
        owner="user-1",
        target=target,
        engine=engine,
        expires_at=expires_at,
    )
