"""What can go wrong reaching a machine and running its engine: one tree under `RemoteError`.

Its own module so the SSH connection (`remote`) and the OpenSSH tunnel (`tunnel`) both raise
these without importing each other.
"""

from __future__ import annotations

from neobatch.common.errors import NeobatchError


class RemoteError(NeobatchError):
    code = "ssh_error"


class HostUnreachable(RemoteError):
    code = "ssh_unreachable"


class HostKeyMismatch(RemoteError):
    code = "host_key_mismatch"


class EngineStartFailed(RemoteError):
    code = "engine_start_failed"


class EngineStopFailed(RemoteError):
    code = "engine_stop_failed"


class EngineLaunchFailed(RemoteError):
    """The machine cannot run the engine at all (no Docker, no NVIDIA runtime, bad runtime):
    the planner ends the job `submit_failed`."""

    code = "engine_launch_failed"


class TunnelFailed(RemoteError):
    """ssh could not start the forward, or exited before it was ready."""

    code = "ssh_tunnel_failed"


class TunnelHostKeyMismatch(TunnelFailed, HostKeyMismatch):
    """The machine presented a host key other than the pinned one."""

    code = "host_key_mismatch"
