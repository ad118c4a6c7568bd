"""Console settings, read once from the environment at start-up (see `neobatch.common.settings`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from neobatch.common.sealing import SealingKey
from neobatch.common.settings import CommonSettings, Env, Settings, read_env
from neobatch.common.webhooks import UrlPolicy

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
            "Listen port of the API and of `/healthz`, `/readyz` (and `/metrics` unless "
            "`NEOBATCH_METRICS_PORT` is set)",
            minimum=0,
        ),
    ] = 8080
    # The API port faces every tenant; metrics are for the operator's scraper (deploy/).
    metrics_port: Annotated[
        int,
        Env(
            "NEOBATCH_METRICS_PORT",
            "Console: a second listener on `NEOBATCH_HEALTH_HOST` serving `/metrics`, `/healthz`, "
            "`/readyz`, and `/metrics` is then not on the API port; `0`: `/metrics` on the API "
            "port (the image sets `9090`)",
            minimum=0,
        ),
    ] = 0
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
    # Seeded like the dev key, as an operator key of project `default`.
    operator_api_key: Annotated[
        str,
        Env(
            "NEOBATCH_OPERATOR_API_KEY",
            "Bootstrap operator key (models, templates, every project's jobs), stored hashed; "
            "empty: none",
            secret=True,
        ),
    ] = ""
    # Off by default: only operators publish templates, for every project.
    private_template_projects: Annotated[
        tuple[str, ...],
        Env(
            "NEOBATCH_PRIVATE_TEMPLATE_PROJECTS",
            "Projects whose keys may own private deployment templates (comma-separated, `*`: "
            "every project); never a launch command, image or raw serve args",
        ),
    ] = ()
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
    # Every request under /api/v1 and /v1 counts, reads too (a token bucket per key).
    rate_limit_per_minute: Annotated[
        int,
        Env(
            "NEOBATCH_RATE_LIMIT_PER_MINUTE",
            "Requests per minute per API key, on every API route (0 = no limit)",
            minimum=0,
        ),
    ] = 600
    # A project past it gets 429 `quota_exceeded` on create; `project_quotas` overrides it.
    max_queued_jobs_per_project: Annotated[
        int,
        Env(
            "NEOBATCH_PROJECT_MAX_QUEUED_JOBS",
            "Queued jobs one project may have; further creates are 429 `quota_exceeded` "
            "(0 = no limit; `project_quotas` overrides per project)",
            minimum=0,
        ),
    ] = 1000
    # Every machine is paid for: the operator bounds how many one job may ask for.
    max_replicas: Annotated[
        int,
        Env(
            "NEOBATCH_MAX_REPLICAS",
            "Most machines one job may run on (`replicas`); above it a create is 400 "
            "`replicas_above_maximum` (AIBrix's schema allows up to 1,024)",
            minimum=1,
            maximum=1024,
        ),
    ] = 16
    # What webhook URLs may reach; the notifier reads the same variables.
    webhook_urls: UrlPolicy = UrlPolicy()
    # Seals signing secrets at rest; the notifier holds the same key.
    webhook_sealing: SealingKey = SealingKey()
    max_webhook_endpoints: Annotated[
        int,
        Env(
            "NEOBATCH_WEBHOOK_MAX_ENDPOINTS",
            "Webhook endpoints one project may register (409 `webhook_endpoint_limit` past it)",
            minimum=1,
        ),
    ] = 16
    # Shown by /api/v1/config/job-capabilities.
    provisioner: Annotated[
        str,
        Env(
            "PROVISIONER",
            "The provider(s) jobs lease from (the first by default), reported in the job "
            "capabilities; a job naming another is refused (400 `unknown_provider`)",
        ),
    ] = "ssh"


def configured_providers(provisioner: str) -> tuple[str, ...]:
    """`PROVISIONER` ("ssh" or an ordered list "runpod,lambdaCloud") as provider names."""
    return tuple(p.strip() for p in provisioner.split(",") if p.strip())


def read_settings(env: Mapping[str, str] | None = None) -> ConsoleSettings:
    return read_env(ConsoleSettings, env)
