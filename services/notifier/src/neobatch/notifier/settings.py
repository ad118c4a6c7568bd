"""Notifier settings, read once from the environment (see `neobatch.common.settings`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from neobatch.common.errors import ConfigError
from neobatch.common.sealing import SealingKey
from neobatch.common.settings import CommonSettings, Env, EnvFields, Settings, read_env
from neobatch.common.webhooks import UrlPolicy
from neobatch.notifier.policy import RetryPolicy


class NotifierSettings(Settings, frozen=True, kw_only=True):
    common: CommonSettings
    # What webhook URLs may reach (the console reads the same variables at registration).
    urls: UrlPolicy = UrlPolicy()
    # Opens the signing secrets the console sealed (the same key as the console's).
    sealing: SealingKey = SealingKey()
    retry: Annotated[
        RetryPolicy,
        EnvFields(
            base_seconds=Env(
                "NEOBATCH_WEBHOOK_RETRY_BASE_SECONDS",
                "First retry delay of a webhook delivery; doubles each attempt, jittered",
                positive=True,
            ),
            max_delay_seconds=Env(
                "NEOBATCH_WEBHOOK_RETRY_MAX_DELAY_SECONDS",
                "Longest backoff between two attempts of a delivery (a longer `Retry-After` wins)",
                positive=True,
            ),
            window_seconds=Env(
                "NEOBATCH_WEBHOOK_RETRY_WINDOW_SECONDS",
                "How long a failing delivery is retried after its first attempt (24 h)",
                positive=True,
            ),
            disable_after_failures=Env(
                "NEOBATCH_WEBHOOK_DISABLE_AFTER_FAILURES",
                "Consecutive deliveries that ended failed before an endpoint is disabled",
                minimum=1,
            ),
        ),
    ] = RetryPolicy()
    timeout_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_WEBHOOK_TIMEOUT_SECONDS",
            "Whole-attempt timeout of a webhook delivery (connect, send, answer)",
            positive=True,
        ),
    ] = 10.0
    max_response_bytes: Annotated[
        int,
        Env(
            "NEOBATCH_WEBHOOK_MAX_RESPONSE_BYTES",
            "Bytes of a receiver's answer the notifier reads at most",
            minimum=0,
        ),
    ] = 64 * 1024
    concurrency: Annotated[
        int,
        Env("NEOBATCH_WEBHOOK_CONCURRENCY", "Webhook deliveries in flight at once", minimum=1),
    ] = 8
    # Longer than an attempt: a delivery in flight is never taken over by another notifier.
    lease_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_WEBHOOK_LEASE_SECONDS",
            "Lease on a delivery in flight; a killed notifier's deliveries are retried by "
            "another after it (must exceed `NEOBATCH_WEBHOOK_TIMEOUT_SECONDS`)",
            positive=True,
        ),
    ] = 60.0
    poll_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_WEBHOOK_POLL_SECONDS",
            "How often the delivery loop looks for due deliveries when not woken",
            positive=True,
        ),
    ] = 1.0


def read_settings(env: Mapping[str, str] | None = None) -> NotifierSettings:
    settings = read_env(NotifierSettings, env)
    if settings.lease_seconds <= settings.timeout_seconds:
        raise ConfigError(
            "NEOBATCH_WEBHOOK_LEASE_SECONDS must exceed NEOBATCH_WEBHOOK_TIMEOUT_SECONDS"
        )
    return settings
