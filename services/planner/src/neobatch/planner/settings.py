"""Planner settings, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from neobatch.common.settings import CommonSettings, env_float, read_common


class PlannerSettings(msgspec.Struct, frozen=True, kw_only=True):
    common: CommonSettings
    # How long provisioning may take before the job fails (issue: default 20 min).
    provisioning_timeout_seconds: float = 1200.0


def read_settings(env: Mapping[str, str] | None = None) -> PlannerSettings:
    env = os.environ if env is None else env
    return PlannerSettings(
        common=read_common(env),
        provisioning_timeout_seconds=env_float(
            env, "NEOBATCH_PROVISIONING_TIMEOUT_SECONDS", 1200.0
        ),
    )
