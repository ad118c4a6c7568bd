"""The command-line tools of a simulated GPU machine: ``vllm``, ``sudo`` and ``docker`` shims.

A simulated machine (a loopback SSH host, see ``neobatch.sim.cloud``) gets a ``bin/`` directory first on
the ``PATH`` of its SSH sessions. ``install`` writes small Python scripts there (shebang =
``sys.executable``, so they can import this module); each runs ``shim_main(tool, config)``:

- ``vllm serve MODEL [--host H] [--port P] [--served-model-name N] [any other vLLM flag]``
  execs the engine simulator ``python -m neobatch.sim.engine --host 127.0.0.1 --port P
  --model N`` (unknown vLLM flags are accepted and ignored); on a machine installed with
  ``real_engine_python`` (a vLLM CPU venv's python, ``neobatch.sim.real_engine``) it execs the
  real server instead, ``PY -m vllm.entrypoints.openai.api_server --model MODEL [flags]``, and
  ``docker run`` does the same with the container's arguments;
- ``sudo [-n] [-E] [-H] [-u USER] CMD ...`` runs CMD (our own tools in-process);
- ``docker`` understands what the runtime-agent uses: ``info [--format F]`` (``Runtimes``
  lists ``nvidia`` unless the machine lacks it), ``run -d --name N [--gpus all] [--ipc=host]
  -p 127.0.0.1:HOST:8000 IMAGE ARGS...`` (starts the engine simulator on HOST in the
  background, the container's vLLM arguments parsed as for ``vllm serve``), ``inspect
  [--format F] N``, ``stop [-t S] N``, ``rm [-f] N``, ``logs [--tail K] N``, ``ps [-a]``.
  Containers are remembered in the machine's state directory (``.sim/containers``).

Every ``vllm`` and ``docker`` call is recorded as a JSON line ``{"machine", "tool", "argv"}``
in the ``records`` file, so tests can assert the exact command the agent ran. A machine can
lack Docker (``sudo docker ...`` answers ``sudo: docker: command not found``) or the NVIDIA
runtime (``docker run --gpus`` fails as Docker does). ``kill_machine_processes`` ends every
engine a machine started, as deleting the machine would.

Modules: ``machine`` (install, environment, records, ending a machine's engines), ``shims``
(the tools' entry point and ``sudo``), ``vllm`` and ``docker``.
"""

from neobatch.sim.machine_tools.machine import (
    TOOLS,
    install,
    kill_machine_processes,
    machine_env,
    read_records,
    state_dir,
)

__all__ = ["TOOLS", "install", "kill_machine_processes", "machine_env", "read_records", "state_dir"]
