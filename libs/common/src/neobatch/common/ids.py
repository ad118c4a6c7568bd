"""Identifiers. Our ids carry a readable prefix so a log line says what it names."""

from __future__ import annotations

import hashlib
import uuid


def new_id(prefix: str) -> str:
    """`new_id("job")` → `job_3f2a…`: a random id with a kind prefix."""
    return f"{prefix}_{uuid.uuid4().hex}"


def resource_name(provision_id: str) -> str:
    """The deterministic name we give a machine at the provider (DESIGN rule 5).

    Derived from our provision id so that after a timeout we can find the machine by name
    instead of creating a second one.

    Unique per provision: a job's provisions (`prov_<job>_1`, `_2`, ...: several machines, or
    a replacement) share their first characters, so a digest of the whole id follows them.
    """
    body = provision_id.removeprefix("prov_")
    return f"neobatch-{body[:24]}-{hashlib.sha256(provision_id.encode()).hexdigest()[:8]}"
