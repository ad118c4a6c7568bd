"""The cloud simulators' ports are the stack's ports (issue 13, finding 9).

The local stack ignored `NEOBATCH_RUNPOD_SIM_PORT`/`NEOBATCH_LAMBDA_SIM_PORT`: the simulators
always took 8180/8181, which collided with a console moved to 8180.
"""

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from neobatch.sim.devstack.layout import Ports, RunLayout, StackError
from neobatch.sim.devstack.stack import plan_stack, start_stack
from neobatch.sim.testing.servers import free_port

EXTERNAL = {"nats_url": "nats://127.0.0.1:1", "mongo_url": "mongodb://127.0.0.1:1"}
CLOUDS = {"PROVISIONER": "runpod,lambdaCloud"}


def test_the_simulators_listen_where_the_environment_says(tmp_path: Path) -> None:
    runpod, lam, lam_ssh = free_port(), free_port(), free_port()
    environ = {
        "NEOBATCH_RUNPOD_SIM_PORT": str(runpod),
        "NEOBATCH_LAMBDA_SIM_PORT": str(lam),
        "NEOBATCH_LAMBDA_SSH_PORT": str(lam_ssh),
    }
    ports = Ports.from_env(environ)  # what `./task up` does with the shell's environment
    assert (ports.runpod_sim, ports.lambda_sim, ports.lambda_ssh) == (runpod, lam, lam_ssh)
    plan = plan_stack(RunLayout(tmp_path), ports, CLOUDS, (), "nats://x", "mongodb://x")
    assert plan.sims["runpod-sim"].port == runpod
    assert plan.sims["lambda-sim"].port == lam
    assert ["--port", str(runpod)] == plan.sims["runpod-sim"].args[:2]
    assert str(lam_ssh) in plan.sims["lambda-sim"].args
    assert plan.env["RUNPOD_BASE_URL"] == f"http://127.0.0.1:{runpod}"
    assert plan.env["LAMBDA_CLOUD_BASE_URL"] == f"http://127.0.0.1:{lam}/api/v1"
    assert plan.env["LAMBDA_CLOUD_SSH_PORT"] == str(lam_ssh)


def test_the_defaults_are_unchanged() -> None:
    ports = Ports.from_env({})
    assert (ports.runpod_sim, ports.lambda_sim, ports.lambda_ssh) == (8180, 8181, 2200)
    free = Ports.free()
    assert len({getattr(free, attr) for attr in Ports.ENV_NAMES}) == len(Ports.ENV_NAMES)


def test_a_console_on_a_simulators_port_fails_before_anything_starts(tmp_path: Path) -> None:
    # The console moved to 8180, the RunPod simulator left at its default (8180).
    ports = replace(Ports.free(), console=8180, runpod_sim=Ports().runpod_sim)
    with pytest.raises(StackError) as error:
        start_stack(tmp_path / "run", ports, CLOUDS, services=("console",), **EXTERNAL)
    message = str(error.value)
    assert "NEOBATCH_CONSOLE_PORT" in message and "NEOBATCH_RUNPOD_SIM_PORT" in message
    assert not list((tmp_path / "run" / "pids").iterdir())


def test_a_busy_simulator_port_fails_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        ports = Ports.free().overridden({"NEOBATCH_RUNPOD_SIM_PORT": str(busy)})
        with pytest.raises(StackError) as error:
            start_stack(tmp_path / "run", ports, CLOUDS, services=(), **EXTERNAL)
    message = str(error.value)
    assert f"port {busy} for runpod-sim is in use" in message
    assert "NEOBATCH_RUNPOD_SIM_PORT" in message
    assert not list((tmp_path / "run" / "pids").iterdir())
