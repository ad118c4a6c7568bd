"""Settings read from the environment once at start-up and passed down explicitly.

Every service has its own settings Struct that embeds `CommonSettings`; nothing reads
`os.environ` after start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from neobatch.common.errors import ConfigError


class CommonSettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    mongo_url: str = "mongodb://127.0.0.1:27017"
    db_name: str = "neobatch"
    # Subject prefix and stream name: lets several stacks share one nats-server (tests).
    namespace: str = "neobatch"
    log_level: str = "INFO"
    # JetStream stream replicas: 3 on a 3-node cluster (deploy/), 1 on a single nats-server.
    stream_replicas: int = 1
    # Where non-HTTP services serve /healthz, /readyz and /metrics (port 0 = not served).
    health_host: str = "127.0.0.1"
    health_port: int = 0
    # How long a /metrics scrape reuses the state read from MongoDB and JetStream.
    metrics_cache_seconds: float = 2.0


def nats_servers(url: str) -> list[str]:
    """`NATS_URL` may list a cluster's seeds, comma-separated (`nats://a:4222,nats://b:4222`)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def read_common(env: Mapping[str, str] | None = None) -> CommonSettings:
    env = os.environ if env is None else env
    return CommonSettings(
        nats_url=env_str(env, "NATS_URL", "nats://127.0.0.1:4222"),
        mongo_url=env_str(env, "MONGO_URL", "mongodb://127.0.0.1:27017"),
        db_name=env_str(env, "NEOBATCH_DB", "neobatch"),
        namespace=env_str(env, "NEOBATCH_NAMESPACE", "neobatch"),
        log_level=env_str(env, "NEOBATCH_LOG_LEVEL", "INFO").upper(),
        stream_replicas=env_int(env, "NEOBATCH_STREAM_REPLICAS", 1, minimum=1),
        health_host=env_str(env, "NEOBATCH_HEALTH_HOST", "127.0.0.1"),
        health_port=env_int(env, "NEOBATCH_HEALTH_PORT", 0, minimum=0),
        metrics_cache_seconds=env_float(env, "NEOBATCH_METRICS_CACHE_SECONDS", 2.0),
    )
