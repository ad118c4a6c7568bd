"""The shim side: each tool in a machine's ``bin/`` runs ``shim_main(tool, config, argv)``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from neobatch.sim.machine_tools.docker import docker
from neobatch.sim.machine_tools.machine import CONFIG
from neobatch.sim.machine_tools.vllm import vllm


def shim_main(tool: str, config_path: str, args: list[str]) -> int:
    cfg = json.loads(Path(config_path).read_text())
    if tool == "sudo":
        return sudo(cfg, args)
    if tool == "vllm":
        return vllm(cfg, args)
    if tool == "docker":
        return docker(cfg, args)
    print(f"{tool}: not a simulated tool", file=sys.stderr)
    return 127


def sudo(cfg: dict[str, Any], args: list[str]) -> int:
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] == "--":
            i += 1
            break
        i += 2 if args[i] in ("-u", "-g") else 1
    command = args[i:]
    if not command:
        print("usage: sudo [-n] command", file=sys.stderr)
        return 1
    name = command[0]
    if name == "docker" and not cfg["docker"]:
        print("sudo: docker: command not found", file=sys.stderr)
        return 1
    if name in cfg["tools"]:
        return shim_main(name, str(Path(cfg["state"]) / CONFIG), command[1:])
    try:
        os.execvp(name, command)
    except OSError:
        print(f"sudo: {name}: command not found", file=sys.stderr)
        return 1
    return 0  # not reached
