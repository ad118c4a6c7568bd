"""Planner settings, read once from the environment (see `neobatch.common.settings`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from neobatch.common.settings import CommonSettings, Env, EnvFields, Settings, read_env
from neobatch.planner.policy import Limits


class PlannerSettings(Settings, frozen=True, kw_only=True):
    common: CommonSettings
    limits: Annotated[
        Limits,
        EnvFields(
            max_provision_attempts=Env(
                "NEOBATCH_MAX_PROVISION_ATTEMPTS",
                "Provisions tried for one job when machines are lost",
                minimum=1,
            ),
            provisioning_seconds=Env(
                "NEOBATCH_PROVISIONING_TIMEOUT_SECONDS",
                "Longest wait for a machine before the job is `resource_failed`",
            ),
            cancel_seconds=Env(
                "NEOBATCH_CANCEL_TIMEOUT_SECONDS",
                "Longest wait for the agent or resource-manager to confirm a cancel",
            ),
            grace_seconds=Env(
                "NEOBATCH_DEADLINE_GRACE_SECONDS",
                "Grace after the resource-manager's provisioning deadline before the "
                "planner's own deadline fires",
            ),
            expiry_grace_seconds=Env(
                "NEOBATCH_EXPIRY_GRACE_SECONDS",
                "Time after the completion window before the planner expires a batch the "
                "agent never reported expired",
            ),
            max_machines_per_project=Env(
                "NEOBATCH_PROJECT_MAX_MACHINES",
                "Machines one project may hold at once; its further jobs wait queued "
                "(0 = no limit; `project_quotas` overrides per project)",
                minimum=0,
            ),
            budget_stop_seconds=Env(
                "NEOBATCH_BUDGET_STOP_SECONDS",
                "A job with max_cost_usd begins stopping this long before its bill reaches the "
                "cap (the stop itself is billed: files, engine stop, release)",
                minimum=0,
            ),
        ),
    ] = Limits()
    # AIBrix provisions one job at a time; we default to four in parallel.
    max_concurrent_provisioning: Annotated[
        int,
        Env(
            "MAX_CONCURRENT_PROVISIONING",
            "Jobs provisioning at once (slots, in queue order)",
            minimum=1,
        ),
    ] = 4
    budget_check_seconds: Annotated[
        float,
        Env(
            "NEOBATCH_BUDGET_CHECK_SECONDS",
            "How often the planner looks for projects over their monthly budget whose operator "
            "stops running jobs (`stop_running_jobs`)",
            minimum=1,
        ),
    ] = 30.0
    # AIBrix's PLANNER_WORKER_COUNT, default 10.
    worker_count: Annotated[
        int,
        Env("PLANNER_WORKER_COUNT", "Events handled concurrently per consumer", minimum=1),
    ] = 10


def read_settings(env: Mapping[str, str] | None = None) -> PlannerSettings:
    return read_env(PlannerSettings, env)
