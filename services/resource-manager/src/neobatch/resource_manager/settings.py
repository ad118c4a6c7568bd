"""Resource-manager settings, named as AIBrix names them (aibrix-batch-resource-manager.md).

`PROVISIONER` is one provider or an ordered list (`runpod,lambdaCloud`): the first is the
default for jobs that name none, and cloud providers are tried in this order on no capacity.
Each provider's block is read only when it is selected, and a selected provider without its
credential stops start-up: `resource manager init: missing credential <VAR>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from neobatch.common.settings import CommonSettings, Env, Settings, When, read_env

KNOWN_PROVIDERS = ("ssh", "runpod", "lambdaCloud")
CLOUD_PROVIDERS = ("runpod", "lambdaCloud")


class RunPodSettings(Settings, frozen=True, kw_only=True):
    api_key: Annotated[str, Env("RUNPOD_API_KEY", "RunPod API key", secret=True, credential=True)]
    ssh_public_key: Annotated[
        str, Env("RUNPOD_SSH_PUBLIC_KEY", "Public key put on RunPod pods", credential=True)
    ]
    base_url: Annotated[str, Env("RUNPOD_BASE_URL", "RunPod API base URL (REST v2)")] = (
        "https://api.runpod.io"
    )
    data_centers: Annotated[
        tuple[str, ...],
        Env("RUNPOD_DATA_CENTERS", "Comma-separated data centers to use; empty: any"),
    ] = ()
    image: Annotated[str, Env("RUNPOD_IMAGE", "Pod image")] = "vllm/vllm-openai:latest"
    cloud_type: Annotated[
        str,
        Env(
            "RUNPOD_CLOUD_TYPE",
            "Where pods run: RunPod's own data centers or the community cloud",
            choices=("SECURE", "COMMUNITY"),
            case="upper",
        ),
    ] = "SECURE"


class LambdaCloudSettings(Settings, frozen=True, kw_only=True):
    api_key: Annotated[
        str, Env("LAMBDA_CLOUD_API_KEY", "Lambda Cloud API key", secret=True, credential=True)
    ]
    ssh_key_names: Annotated[
        tuple[str, ...],
        Env(
            "LAMBDA_CLOUD_SSH_KEYS",
            "Comma-separated SSH key names registered at Lambda",
            credential=True,
        ),
    ]
    base_url: Annotated[str, Env("LAMBDA_CLOUD_BASE_URL", "Lambda Cloud API base URL")] = (
        "https://cloud.lambda.ai/api/v1"
    )
    region: Annotated[str, Env("LAMBDA_CLOUD_REGION", "Region to launch in; empty: any")] = ""
    # Lambda serves SSH on 22; only the local simulator needs another port (see lambda_cloud.py).
    ssh_port: Annotated[
        int, Env("LAMBDA_CLOUD_SSH_PORT", "SSH port of Lambda instances", positive=True)
    ] = 22


class ResourceManagerSettings(Settings, frozen=True, kw_only=True):
    common: CommonSettings
    # Ordered: the first is the default for jobs that name none.
    provisioners: Annotated[
        tuple[str, ...],
        Env(
            "PROVISIONER",
            "Provider(s) machines come from, an ordered comma-separated list: the first is "
            "the default for jobs that name none, clouds are tried in this order on no capacity",
            choices=KNOWN_PROVIDERS,
        ),
    ] = ("ssh",)
    ssh_pool: Annotated[
        str,
        Env(
            "NEOBATCH_SSH_POOL",
            "SSH pool, comma-separated `user@host:port[=GPU_TYPExCOUNT]` (no GPU part: matches "
            "any accelerator request)",
            credential=True,
            required_when=When("provisioners", "ssh"),
        ),
    ] = ""
    ssh_pool_prices: Annotated[
        str,
        Env(
            "NEOBATCH_SSH_POOL_PRICES",
            "Operator-set price of the SSH pool's machines for the bill, comma-separated "
            "`GPU_TYPE=USD` per GPU per hour (e.g. `H100=2.5,A100=1.2`); a GPU type not listed "
            "costs 0",
        ),
    ] = ""
    runpod: Annotated[RunPodSettings | None, When("provisioners", "runpod")] = None
    lambda_cloud: Annotated[LambdaCloudSettings | None, When("provisioners", "lambdaCloud")] = None
    reconcile_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_RECONCILE_SECONDS",
            "Interval of the orphan/lost-machine reconciler (cloud providers)",
            positive=True,
        ),
    ] = 60.0
    catalog_refresh_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_CATALOG_REFRESH_SECONDS",
            "Interval of the offers catalog refresh (cloud providers)",
            positive=True,
        ),
    ] = 300.0
    lease_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_PROVISION_LEASE_SECONDS",
            "Lease on a provision being worked on (taken over when it expires)",
            positive=True,
        ),
    ] = 30.0
    # Then the driver tries again later.
    retry_budget_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_PROVIDER_RETRY_BUDGET_SECONDS",
            "Time one idempotent provider call retries 429/5xx",
            positive=True,
        ),
    ] = 10.0

    @property
    def cloud_order(self) -> tuple[str, ...]:
        return tuple(p for p in self.provisioners if p in CLOUD_PROVIDERS)


def read_settings(env: Mapping[str, str] | None = None) -> ResourceManagerSettings:
    return read_env(ResourceManagerSettings, env, context="resource manager init")
