"""Console settings, read once from the environment at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from neobatch.common.settings import CommonSettings, env_int, env_str, read_common

DEFAULT_MAX_UPLOAD_BYTES = 200 * 1024 * 1024
DEFAULT_RATE_LIMIT_PER_MINUTE = 600
# The project the dev key (NEOBATCH_API_KEY) belongs to.
DEV_PROJECT = "default"


class ConsoleSettings(msgspec.Struct, frozen=True, kw_only=True):
    common: CommonSettings = CommonSettings()
    host: str = "127.0.0.1"
    port: int = 8080
    # The dev key, seeded into `api_keys` (project `default`) at start. Empty: no dev key;
    # only keys made with `python -m neobatch.console.keys create` are accepted.
    api_key: str = ""
    # Template name used when a job names none (AIBrix DEFAULT_BATCH_MODEL_DEPLOYMENT_TEMPLATE).
    default_template: str = ""
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # Creates (jobs, batches, uploads) each API key may make per minute; 0 turns the limit off.
    rate_limit_per_minute: int = DEFAULT_RATE_LIMIT_PER_MINUTE
    # The provider jobs lease from by default (shown by /api/v1/config/job-capabilities).
    provisioner: str = "ssh"

    def __repr__(self) -> str:
        # Settings get logged and shown in tracebacks; the key must never be among them.
        return (
            f"ConsoleSettings(common={self.common!r}, host={self.host!r}, port={self.port}, "
            f"api_key={'set' if self.api_key else 'unset'}, "
            f"default_template={self.default_template!r}, max_upload_bytes={self.max_upload_bytes}, "
            f"rate_limit_per_minute={self.rate_limit_per_minute}, provisioner={self.provisioner!r})"
        )


def read_settings(env: Mapping[str, str] | None = None) -> ConsoleSettings:
    env = os.environ if env is None else env
    # Defaults come from an instance: on a msgspec Struct class, a field name is a descriptor.
    defaults = ConsoleSettings()
    return ConsoleSettings(
        common=read_common(env),
        host=env_str(env, "NEOBATCH_CONSOLE_HOST", defaults.host),
        port=env_int(env, "NEOBATCH_CONSOLE_PORT", defaults.port, minimum=0),
        api_key=env.get("NEOBATCH_API_KEY", "").strip(),
        default_template=env_str(env, "DEFAULT_BATCH_MODEL_DEPLOYMENT_TEMPLATE", ""),
        max_upload_bytes=env_int(
            env, "NEOBATCH_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES, minimum=1
        ),
        rate_limit_per_minute=env_int(
            env, "NEOBATCH_RATE_LIMIT_PER_MINUTE", DEFAULT_RATE_LIMIT_PER_MINUTE, minimum=0
        ),
        provisioner=env_str(env, "PROVISIONER", defaults.provisioner),
    )
