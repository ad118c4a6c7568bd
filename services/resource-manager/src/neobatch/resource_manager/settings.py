"""Resource-manager settings, named as AIBrix names them (aibrix-batch-resource-manager.md).

`PROVISIONER` is one provider or an ordered list (`runpod,lambdaCloud`): the first is the
default for jobs that name none, and cloud providers are tried in this order on no capacity.
A selected provider without its credential stops start-up:
`resource manager init: missing credential <VAR>`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from neobatch.common.errors import ConfigError
from neobatch.common.settings import CommonSettings, env_str, read_common

KNOWN_PROVIDERS = ("ssh", "runpod", "lambdaCloud")
CLOUD_PROVIDERS = ("runpod", "lambdaCloud")
_REQUIRED = {
    "ssh": ("NEOBATCH_SSH_POOL",),
    "runpod": ("RUNPOD_API_KEY", "RUNPOD_SSH_PUBLIC_KEY"),
    "lambdaCloud": ("LAMBDA_CLOUD_API_KEY", "LAMBDA_CLOUD_SSH_KEYS"),
}


class RunPodSettings(msgspec.Struct, frozen=True, kw_only=True):
    api_key: str
    ssh_public_key: str
    base_url: str = "https://api.runpod.io"
    data_centers: tuple[str, ...] = ()
    image: str = "vllm/vllm-openai:latest"
    cloud_type: str = "SECURE"


class LambdaCloudSettings(msgspec.Struct, frozen=True, kw_only=True):
    api_key: str
    ssh_key_names: tuple[str, ...]
    base_url: str = "https://cloud.lambda.ai/api/v1"
    region: str = ""
    # Lambda serves SSH on 22; only the local simulator needs another port (see lambda_cloud.py).
    ssh_port: int = 22


class ResourceManagerSettings(msgspec.Struct, frozen=True, kw_only=True):
    common: CommonSettings
    # Ordered: the first is the default for jobs that name none.
    provisioners: tuple[str, ...] = ("ssh",)
    ssh_pool: str = ""
    runpod: RunPodSettings | None = None
    lambda_cloud: LambdaCloudSettings | None = None
    reconcile_seconds: float = 60.0
    catalog_refresh_seconds: float = 300.0
    lease_seconds: float = 30.0
    # How long one idempotent provider call retries 429/5xx before the driver tries again later.
    retry_budget_seconds: float = 10.0

    @property
    def cloud_order(self) -> tuple[str, ...]:
        return tuple(p for p in self.provisioners if p in CLOUD_PROVIDERS)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env_str(env, name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"resource manager init: {name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"resource manager init: {name} must be positive")
    return value


def read_settings(env: Mapping[str, str] | None = None) -> ResourceManagerSettings:
    env = os.environ if env is None else env
    provisioners = _csv(env_str(env, "PROVISIONER", "ssh")) or ("ssh",)
    for name in provisioners:
        if name not in KNOWN_PROVIDERS:
            raise ConfigError(
                f"resource manager init: unknown provisioner {name!r} (known: {', '.join(KNOWN_PROVIDERS)})"
            )
        for variable in _REQUIRED[name]:
            if not env_str(env, variable, "").strip():
                raise ConfigError(f"resource manager init: missing credential {variable}")
    runpod = None
    if "runpod" in provisioners:
        cloud_type = env_str(env, "RUNPOD_CLOUD_TYPE", "SECURE").upper()
        if cloud_type not in ("SECURE", "COMMUNITY"):
            raise ConfigError(
                "resource manager init: RUNPOD_CLOUD_TYPE must be SECURE or COMMUNITY"
            )
        runpod = RunPodSettings(
            api_key=env_str(env, "RUNPOD_API_KEY", "").strip(),
            ssh_public_key=env_str(env, "RUNPOD_SSH_PUBLIC_KEY", "").strip(),
            base_url=env_str(env, "RUNPOD_BASE_URL", "") or "https://api.runpod.io",
            data_centers=_csv(env_str(env, "RUNPOD_DATA_CENTERS", "")),
            image=env_str(env, "RUNPOD_IMAGE", "") or "vllm/vllm-openai:latest",
            cloud_type=cloud_type,
        )
    lambda_cloud = None
    if "lambdaCloud" in provisioners:
        lambda_cloud = LambdaCloudSettings(
            api_key=env_str(env, "LAMBDA_CLOUD_API_KEY", "").strip(),
            ssh_key_names=_csv(env_str(env, "LAMBDA_CLOUD_SSH_KEYS", "")),
            base_url=env_str(env, "LAMBDA_CLOUD_BASE_URL", "") or "https://cloud.lambda.ai/api/v1",
            region=env_str(env, "LAMBDA_CLOUD_REGION", "").strip(),
            ssh_port=int(_number(env, "LAMBDA_CLOUD_SSH_PORT", 22)),
        )
    return ResourceManagerSettings(
        common=read_common(env),
        provisioners=provisioners,
        ssh_pool=env_str(env, "NEOBATCH_SSH_POOL", ""),
        runpod=runpod,
        lambda_cloud=lambda_cloud,
        reconcile_seconds=_number(env, "NEOBATCH_RECONCILE_SECONDS", 60.0),
        catalog_refresh_seconds=_number(env, "NEOBATCH_CATALOG_REFRESH_SECONDS", 300.0),
        lease_seconds=_number(env, "NEOBATCH_PROVISION_LEASE_SECONDS", 30.0),
        retry_budget_seconds=_number(env, "NEOBATCH_PROVIDER_RETRY_BUDGET_SECONDS", 10.0),
    )
