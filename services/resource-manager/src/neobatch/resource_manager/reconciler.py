"""The reconciler: no machine without an owner, no owner without its machine (DESIGN rule 5).

On a schedule, for each provider that rents by offer (a crash there can leave a machine that no
provision records; the ssh pool's hosts are ours by configuration): list every machine under the
account whose name has our prefix and terminate those that no live provision owns (orphans: a crash between create and
record that nobody resumed, a leftover of a failed or lost provision, a machine made by an
earlier deployment). Machines are listed *before* provisions are read, and names are recorded
before any create, so a machine being created right now always has its owner in the read.
Then every running provision's machine is described: gone (deleted behind our back) or broken
(RunPod EXITED, Lambda unhealthy) makes the provision `lost` with a `provision.lost` event, and
a broken machine is terminated.

The same module refreshes the offers catalog cache (`offers` collection) on its own schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import msgspec

from neobatch.common.aio import pause
from neobatch.common.clock import Clock
from neobatch.common.contracts import ProvisionStatus
from neobatch.common.logs import log_fields
from neobatch.resource_manager import provisions
from neobatch.resource_manager.providers.base import Attempt, Provider, ProviderError
from neobatch.resource_manager.store import ProvisionStore

log = logging.getLogger("neobatch.resource_manager")

NAME_PREFIX = "neobatch-"  # neobatch.common.ids.resource_name


class Report(msgspec.Struct, kw_only=True):
    orphans_terminated: list[str] = []
    lost: list[str] = []


class Reconciler:
    def __init__(
        self,
        store: ProvisionStore,
        providers: Mapping[str, Provider],
        clock: Clock,
        notify_outbox: Callable[[], None],
        *,
        interval_seconds: float = 60.0,
        catalog_interval_seconds: float = 300.0,
    ) -> None:
        self._store = store
        self._providers = dict(providers)
        self._clock = clock
        self._notify = notify_outbox
        self._interval = interval_seconds
        self._catalog_interval = catalog_interval_seconds

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except Exception:  # a bad round must not end the loop; the next one retries
                log.exception("reconcile round failed")
            await pause(self._interval)

    async def run_catalog(self) -> None:
        while True:
            await self.refresh_catalog()
            await pause(self._catalog_interval)

    async def refresh_catalog(self) -> None:
        for name, provider in self._providers.items():
            try:
                offers = await provider.catalog()
            except ProviderError as error:
                log.warning(
                    "catalog refresh failed", extra=log_fields(provider=name, error=error.message)
                )
                continue
            await self._store.replace_offers(name, offers, self._clock.now())

    async def reconcile_once(self) -> Report:
        report = Report()
        for name, provider in self._providers.items():
            try:
                await self._orphans(name, provider, report)
                await self._lost(name, provider, report)
            except ProviderError as error:
                log.warning(
                    "reconcile failed", extra=log_fields(provider=name, error=error.message)
                )
        return report

    async def _orphans(self, name: str, provider: Provider, report: Report) -> None:
        machines = await provider.list_owned(NAME_PREFIX)  # before reading provisions
        live = await self._store.list_live()
        for machine in provisions.orphans(machines, live, name):
            # No provision owns it: only its name says which attempt made it.
            orphan = Attempt(provision_id="", name=machine.name)
            await provider.terminate(orphan, machine.provider_resource_id)
            report.orphans_terminated.append(machine.provider_resource_id)
            log.warning(
                "terminated orphan machine",
                extra=log_fields(
                    provider=name, resource_id=machine.provider_resource_id, name=machine.name
                ),
            )

    async def _lost(self, name: str, provider: Provider, report: Report) -> None:
        for provision in await self._store.list_live():
            if (
                provision.status is not ProvisionStatus.RUNNING
                or provision.provider != name
                or provision.provider_resource_id is None
            ):
                continue
            attempt = provisions.attempt_of(provision)
            machine = await provider.describe(attempt, provision.provider_resource_id)
            decision = provisions.lost(provision, machine, self._clock.now())
            if decision is None:
                continue
            if await self._store.save_decision(provision, decision, self._clock.now()):
                self._notify()
                report.lost.append(provision.id)
                log.warning(
                    "provision lost",
                    extra=log_fields(provision_id=provision.id, reason=decision.error_message),
                )
            if not machine.gone:
                await provider.terminate(attempt, provision.provider_resource_id)
