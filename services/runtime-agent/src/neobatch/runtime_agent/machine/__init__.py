"""A batch's machine: launch scripts (pure), the SSH connection, the OpenSSH tunnel, the engine
session that ties them to one batch, and their errors."""
