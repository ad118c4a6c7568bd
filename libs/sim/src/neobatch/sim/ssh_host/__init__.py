"""The loopback SSH host double (asyncssh); see ``neobatch.sim.ssh_host.server``."""

from neobatch.sim.ssh_host.keys import load_or_create_host_key, public_key_line, write_private_key
from neobatch.sim.ssh_host.server import SSHHost, start_ssh_host

__all__ = [
    "SSHHost",
    "load_or_create_host_key",
    "public_key_line",
    "start_ssh_host",
    "write_private_key",
]
