"""Resource-manager settings. A selected provider without its configuration stops start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from neobatch.common.errors import ConfigError
from neobatch.common.settings import CommonSettings, env_str, read_common

KNOWN_PROVIDERS = ("ssh",)


class ResourceManagerSettings(msgspec.Struct, frozen=True, kw_only=True):
    common: CommonSettings
    # Ordered: the first is the default for jobs that name none.
    provisioners: tuple[str, ...] = ("ssh",)
    ssh_pool: str = ""


def read_settings(env: Mapping[str, str] | None = None) -> ResourceManagerSettings:
    env = os.environ if env is None else env
    provisioners = tuple(
        p.strip() for p in env_str(env, "PROVISIONER", "ssh").split(",") if p.strip()
    )
    for name in provisioners:
        if name not in KNOWN_PROVIDERS:
            raise ConfigError(
                f"resource manager init: unknown provisioner {name!r} (known: {', '.join(KNOWN_PROVIDERS)})"
            )
    settings = ResourceManagerSettings(
        common=read_common(env),
        provisioners=provisioners,
        ssh_pool=env_str(env, "NEOBATCH_SSH_POOL", ""),
    )
    if "ssh" in provisioners and not settings.ssh_pool:
        raise ConfigError("resource manager init: missing credential NEOBATCH_SSH_POOL")
    return settings
