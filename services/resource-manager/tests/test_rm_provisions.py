"""The provision state machine, table-driven: (provision, what the provider said) →
(status, error code, events). Pure: no fixtures, milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from neobatch.common.contracts import ProvisionStatus, ResourceRequest, SshEndpoint
from neobatch.common.errors import NeobatchError
from neobatch.resource_manager import provisions
from neobatch.resource_manager.offers import Offer
from neobatch.resource_manager.providers.base import (
    Machine,
    NoCapacity,
    NoGpuType,
    OwnedMachine,
    ProviderError,
    TransientProviderError,
)
from neobatch.resource_manager.provisions import Decision, Provision

NOW = datetime(2025, 1, 1, tzinfo=UTC)
S = ProvisionStatus
OFFER = Offer(
    provider="runpod",
    gpu_type="NVIDIA H100 PCIe",
    gpu_description="NVIDIA H100 PCIe",
    gpu_count=1,
    region="EU-1",
    price_per_hour=2.0,
)
UP = Machine(
    provider_resource_id="m1",
    ready=True,
    endpoint=SshEndpoint(host="10.0.0.1", port=22, username="root"),
)


def provision(status: ProvisionStatus = S.REQUESTED, **fields: object) -> Provision:
    values: dict[str, object] = {
        "id": "prov_1",
        "job_id": "job_1",
        "status": status,
        "provider": "runpod",
        "resource_name": "neobatch-1",
        "request": ResourceRequest(accelerator_type="H100"),
        "deadline_at": NOW + timedelta(minutes=10),
        **fields,
    }
    return Provision(**values)  # type: ignore[arg-type]


CASES: list[tuple[str, Callable[[], Decision], ProvisionStatus, str, list[str]]] = [
    (
        "ready with an endpoint: running",
        lambda: provisions.after_machine(provision(S.BOOTING), UP, NOW),
        S.RUNNING,
        "",
        ["provision.running"],
    ),
    (
        "not ready yet: booting, nothing said",
        lambda: provisions.after_machine(
            provision(), Machine(provider_resource_id="m1", ready=False), NOW
        ),
        S.BOOTING,
        "",
        [],
    ),
    (
        "gone before ready",
        lambda: provisions.after_machine(
            provision(S.BOOTING), Machine(provider_resource_id="m1", ready=False, gone=True), NOW
        ),
        S.FAILED,
        "MachineVanished",
        ["provision.failed"],
    ),
    (
        "broken before ready",
        lambda: provisions.after_machine(
            provision(S.BOOTING),
            Machine(provider_resource_id="m1", ready=False, broken=True, status="EXITED"),
            NOW,
        ),
        S.FAILED,
        "MachineFailed",
        ["provision.failed"],
    ),
    (
        "no capacity for the recorded offer: the next offer, at once",
        lambda: provisions.after_error(
            provision(S.CREATING, offer=OFFER), NoCapacity("sold out"), NOW
        ),
        S.CREATING,
        "",
        [],
    ),
    (
        "no capacity without an offer (a busy pool): wait",
        lambda: provisions.after_error(provision(provider="ssh"), NoCapacity("busy"), NOW),
        S.REQUESTED,
        "NoCapacity",
        [],
    ),
    (
        "a transient error past the deadline fails",
        lambda: provisions.after_error(
            provision(S.BOOTING, deadline_at=NOW), TransientProviderError("502"), NOW
        ),
        S.FAILED,
        "ProviderUnavailable",
        ["provision.failed"],
    ),
    (
        "a definite error fails at once",
        lambda: provisions.after_error(provision(), ProviderError("rejected"), NOW),
        S.FAILED,
        "ProviderError",
        ["provision.failed"],
    ),
    (
        "deadline passed",
        lambda: provisions.deadline_passed(provision(S.BOOTING), NOW),
        S.FAILED,
        "ProvisionTimeout",
        ["provision.failed"],
    ),
    (
        "unknown provider",
        lambda: provisions.unknown_provider(provision(provider="nowhere"), ("ssh",), NOW),
        S.FAILED,
        "UnknownProvider",
        ["provision.failed"],
    ),
    (
        "unknown provider, releasing: nothing was made",
        lambda: provisions.unknown_provider(provision(S.RELEASING), ("ssh",), NOW),
        S.RELEASED,
        "",
        ["provision.released"],
    ),
    (
        "offer chosen: recorded before any create",
        lambda: provisions.offer_chosen(provision(), OFFER, NOW),
        S.CREATING,
        "",
        [],
    ),
    (
        "no provider sells the GPU",
        lambda: provisions.no_offer(provision(), ["runpod sells no TPU"], 1, NOW),
        S.FAILED,
        "NoGpuType",
        ["provision.failed"],
    ),
    (
        "every offer tried",
        lambda: provisions.no_offer(
            provision(S.CREATING, attempts=[{"offer": OFFER.key, "error": "sold out"}]), [], 1, NOW
        ),
        S.FAILED,
        "NoCapacity",
        ["provision.failed"],
    ),
    (
        "terminated and confirmed gone",
        lambda: provisions.after_release(provision(S.RELEASING), "m1", True, NOW),
        S.RELEASED,
        "",
        ["provision.released"],
    ),
    (
        "terminated, not gone yet",
        lambda: provisions.after_release(provision(S.RELEASING), "m1", False, NOW),
        S.RELEASING,
        "",
        [],
    ),
    (
        "release call failed: keep releasing",
        lambda: provisions.release_failed(
            provision(S.RELEASING), "m1", TransientProviderError("502"), NOW
        ),
        S.RELEASING,
        "ProviderUnavailable",
        [],
    ),
    (
        "running machine gone: lost",
        lambda: provisions.lost(
            provision(S.RUNNING, provider_resource_id="m1"),
            Machine(provider_resource_id="m1", ready=False, gone=True),
            NOW,
        ),
        S.LOST,
        "MachineLost",
        ["provision.lost"],
    ),
]


@pytest.mark.parametrize(
    ("decide", "status", "code", "subjects"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decision(
    decide: Callable[[], Decision], status: ProvisionStatus, code: str, subjects: list[str]
) -> None:
    decision = decide()
    assert decision.status is status
    assert decision.error_code == code
    assert [event.subject for event in decision.events] == subjects
    assert all(event.occurred_at == NOW for event in decision.events)


def test_a_refused_offer_is_remembered_and_cleared() -> None:
    decision = provisions.after_error(
        provision(S.CREATING, offer=OFFER), NoCapacity("no capacity (sold out)"), NOW
    )
    assert decision.clear_offer and decision.retry_seconds == 0
    assert decision.attempts == [{"offer": OFFER.key, "error": "no capacity (sold out)"}]


def test_running_event_names_the_provider_and_endpoint() -> None:
    (event,) = provisions.after_machine(provision(S.BOOTING), UP, NOW).events
    assert event.provider == "runpod" and event.endpoint == UP.endpoint  # type: ignore[attr-defined]


def test_the_attempt_name_changes_with_each_attempt() -> None:
    first = provisions.attempt_of(provision())
    second = provisions.attempt_of(provision(attempts=[{"offer": OFFER.key, "error": "x"}]))
    assert (first.name, second.name) == ("neobatch-1-0", "neobatch-1-1")


def test_a_job_naming_no_provider_gets_the_first_configured() -> None:
    assert (
        provisions.provider_for(ResourceRequest(accelerator_type="H100"), ("ssh", "runpod"))
        == "ssh"
    )
    named = ResourceRequest(accelerator_type="H100", provider="runpod")
    assert provisions.provider_for(named, ("ssh",)) == "runpod"


def test_provider_errors_are_neobatch_errors_with_stable_codes() -> None:
    assert isinstance(NoGpuType("x"), NeobatchError)
    assert [
        e("m").code for e in (ProviderError, NoCapacity, NoGpuType, TransientProviderError)
    ] == [
        "ProviderError",
        "NoCapacity",
        "NoGpuType",
        "ProviderUnavailable",
    ]


def test_a_serving_machine_is_not_lost() -> None:
    running = provision(S.RUNNING, provider_resource_id="m1")
    assert provisions.lost(running, UP, NOW) is None
    broken = Machine(provider_resource_id="m1", ready=True, broken=True, status="unhealthy")
    decision = provisions.lost(running, broken, NOW)
    assert decision is not None and "provider status unhealthy" in decision.error_message


def test_orphans_are_the_machines_no_live_provision_owns() -> None:
    recorded = provision(S.RUNNING, provider_resource_id="m1")
    creating = provision(S.CREATING, id="prov_2", resource_name="neobatch-2", offer=OFFER)
    machines = [
        OwnedMachine(provider_resource_id="m1", name="neobatch-1-0"),  # owned by its id
        OwnedMachine(provider_resource_id="m2", name="neobatch-2-0"),  # by its attempt's name
        OwnedMachine(provider_resource_id="m3", name="neobatch-3-0"),  # nobody's
    ]
    orphans = provisions.orphans(machines, [recorded, creating], "runpod")
    assert [m.provider_resource_id for m in orphans] == ["m3"]
    # Another provider's provision does not own a machine by name here.
    assert [
        m.provider_resource_id for m in provisions.orphans(machines, [creating], "lambdaCloud")
    ] == ["m1", "m2", "m3"]


def test_every_provision_of_a_job_has_its_own_machine_name() -> None:
    """Issue 15: a job's provisions (prov_<job>_1, _2, ... and replacements) were all named
    after the first 24 characters of the id, so the second adopted the first one's machine."""
    from neobatch.common.ids import resource_name

    job = "8b6bcd78f83a46188c2bba5c03536fa1"
    names = {resource_name(f"prov_{job}_{n}") for n in range(1, 12)}
    assert len(names) == 11
    assert all(name.startswith("neobatch-") and len(name) <= 48 for name in names)
    assert resource_name(f"prov_{job}_1") == resource_name(f"prov_{job}_1")  # deterministic
