"""Planner settings, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from neobatch.common.settings import CommonSettings, env_float, env_int, read_common
from neobatch.planner.policy import Limits


class PlannerSettings(msgspec.Struct, frozen=True, kw_only=True):
    common: CommonSettings
    limits: Limits = Limits()
    # AIBrix provisions one job at a time; we default to four in parallel.
    max_concurrent_provisioning: int = 4
    # Events handled concurrently per subject (AIBrix's PLANNER_WORKER_COUNT, default 10).
    worker_count: int = 10


def read_settings(env: Mapping[str, str] | None = None) -> PlannerSettings:
    env = os.environ if env is None else env
    return PlannerSettings(
        common=read_common(env),
        limits=Limits(
            provisioning_seconds=env_float(env, "NEOBATCH_PROVISIONING_TIMEOUT_SECONDS", 1200.0),
            grace_seconds=env_float(env, "NEOBATCH_DEADLINE_GRACE_SECONDS", 60.0),
            expiry_grace_seconds=env_float(env, "NEOBATCH_EXPIRY_GRACE_SECONDS", 120.0),
            cancel_seconds=env_float(env, "NEOBATCH_CANCEL_TIMEOUT_SECONDS", 300.0),
            max_provision_attempts=env_int(env, "NEOBATCH_MAX_PROVISION_ATTEMPTS", 3, minimum=1),
        ),
        max_concurrent_provisioning=env_int(env, "MAX_CONCURRENT_PROVISIONING", 4, minimum=1),
        worker_count=env_int(env, "PLANNER_WORKER_COUNT", 10, minimum=1),
    )
