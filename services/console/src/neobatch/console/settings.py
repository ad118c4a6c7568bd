"""Console settings, read once from the environment at start-up (see `neobatch.common.settings`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from neobatch.common.settings import CommonSettings, Env, Settings, read_env

# The project the dev key (NEOBATCH_API_KEY) belongs to.
DEV_PROJECT = "default"


class ConsoleSettings(Settings, frozen=True, kw_only=True):
    common: CommonSettings = CommonSettings()
    host: Annotated[str, Env("NEOBATCH_CONSOLE_HOST", "Listen address (images set `0.0.0.0`)")] = (
        "127.0.0.1"
    )
    port: Annotated[
        int,
        Env(
            "NEOBATCH_CONSOLE_PORT",
            "Listen port of the API and of `/healthz`, `/readyz`, `/metrics`",
            minimum=0,
        ),
    ] = 8080
    # Seeded into `api_keys` (project `default`) at start. Empty: no dev key; only keys made
    # with `python -m neobatch.console.keys create` are accepted.
    api_key: Annotated[
        str,
        Env(
            "NEOBATCH_API_KEY",
            "Bootstrap API key of the default project, stored hashed; empty: none",
            secret=True,
        ),
    ] = ""
    # AIBrix's name for it.
    default_template: Annotated[
        str,
        Env("DEFAULT_BATCH_MODEL_DEPLOYMENT_TEMPLATE", "Template used when a job names none"),
    ] = ""
    # Under a minute only where machines start in seconds (the local stack, its tests).
    min_completion_window_seconds: Annotated[
        int,
        Env(
            "NEOBATCH_MIN_COMPLETION_WINDOW_SECONDS",
            "Shortest `completion_window` a job may ask for",
            minimum=1,
        ),
    ] = 60
    max_upload_bytes: Annotated[
        int, Env("NEOBATCH_MAX_UPLOAD_BYTES", "Largest accepted file upload (200 MiB)", minimum=1)
    ] = 200 * 1024 * 1024
    # Litestar keeps an upload's first MiB in memory and spools the rest to a file here. In
    # k8s mount a disk volume (emptyDir on disk, not `medium: Memory`) at least the upload
    # limit times the concurrent uploads; a full spool answers 507 `spool_full`.
    spool_dir: Annotated[
        str,
        Env(
            "NEOBATCH_SPOOL_DIR",
            "Directory uploads are spooled to while they stream in (empty: the system "
            "temporary directory); size it to the upload limit, on disk",
        ),
    ] = ""
    # Creates (jobs, batches, uploads) each API key may make per minute.
    rate_limit_per_minute: Annotated[
        int,
        Env(
            "NEOBATCH_RATE_LIMIT_PER_MINUTE",
            "Requests per minute per API key (0 = no limit)",
            minimum=0,
        ),
    ] = 600
    # Shown by /api/v1/config/job-capabilities.
    provisioner: Annotated[
        str,
        Env(
            "PROVISIONER",
            "The provider(s) jobs lease from by default, reported in the job capabilities",
        ),
    ] = "ssh"


def read_settings(env: Mapping[str, str] | None = None) -> ConsoleSettings:
    return read_env(ConsoleSettings, env)
