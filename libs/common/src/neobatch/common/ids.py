"""Identifiers. Our ids carry a readable prefix so a log line says what it names."""

from __future__ import annotations

import uuid


def new_id(prefix: str) -> str:
    """`new_id("job")` → `job_3f2a…`: a random id with a kind prefix."""
    return f"{prefix}_{uuid.uuid4().hex}"


def resource_name(provision_id: str) -> str:
    """The deterministic name we give a machine at the provider (DESIGN rule 5).

    Derived from our provision id so that after a timeout we can find the machine by name
    instead of creating a second one.
    """
    return f"neobatch-{provision_id.removeprefix('prov_')[:24]}"
