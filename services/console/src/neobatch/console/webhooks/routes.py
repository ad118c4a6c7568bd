"""Webhook endpoints of the caller's project, in OpenAI's shape (`client.webhooks.create`,
`list`, `retrieve`, `update`, `delete`, `rotate_secret` of the `openai` SDK work against
`/v1/webhook_endpoints`; `/api/v1/webhooks` is the same for AIBrix-style callers), plus each
endpoint's delivery log (`/deliveries`) and the event types (`/v1/webhook_event_types`).

A URL is checked when it is registered (and again by the notifier before every delivery):
https unless the operator allows http, and neither its literal address nor any address its host
resolves to may be loopback, private, link-local or metadata unless the operator's allow-list
holds it (`neobatch.common.webhooks`). The signing secret is answered once, by the create and by
a rotation; a rotation may keep the old secret valid for 24 h (both sign meanwhile).
"""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime, timedelta
from typing import Any

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody

from neobatch.common.errors import Conflict, InvalidInput, NotFound
from neobatch.common.ids import new_id
from neobatch.common.webhooks import (
    EVENT_TYPES,
    UrlPolicy,
    UrlRefused,
    check_addresses,
    check_url,
    new_signing_secret,
    secret_hint,
)
from neobatch.console.keys.auth import Caller
from neobatch.console.paging import PageLimit, page_ends
from neobatch.console.settings import ConsoleSettings
from neobatch.console.webhooks.schemas import (
    CreateEndpoint,
    DeliveryList,
    EndpointDeleted,
    EndpointList,
    EndpointOut,
    EndpointWithSecret,
    EventTypeList,
    RotateSecret,
    UpdateEndpoint,
)
from neobatch.console.webhooks.store import WebhookStore, endpoint_doc
from neobatch.console.webhooks.views import delivery_out, endpoint_out, live_secrets_after

RESOLVE_SECONDS = 3.0
ROTATION_GRACE = timedelta(hours=24)


async def checked_url(url: str, policy: UrlPolicy) -> str:
    """The URL, if the policy allows it and every address its host resolves to: else 400 with
    the policy's code (`insecure_url`, `forbidden_address`, `unresolvable_url`, `invalid_url`)."""
    try:
        target = check_url(url, policy)
        if target.literal is None:
            try:
                infos = await asyncio.wait_for(
                    asyncio.get_running_loop().getaddrinfo(
                        target.host, target.port, type=socket.SOCK_STREAM
                    ),
                    RESOLVE_SECONDS,
                )
            except (OSError, TimeoutError):
                raise UrlRefused(
                    "unresolvable_url", f"url host {target.host[:64]!r} does not resolve"
                ) from None
            check_addresses([str(info[4][0]) for info in infos], policy)
    except UrlRefused as refused:
        raise InvalidInput(f"url: {refused.message}", code=refused.code) from None
    return url


async def _endpoint(store: WebhookStore, endpoint_id: str, caller: Caller) -> dict[str, Any]:
    doc = await store.find_endpoint(endpoint_id, caller.project)
    if doc is None:
        raise NotFound(
            f"webhook endpoint {endpoint_id[:64]!r} not found", code="webhook_endpoint_not_found"
        )
    return doc


class WebhookEndpointController(Controller):
    path = "/webhook_endpoints"

    @post("/", status_code=200)
    async def create_endpoint(
        self,
        data: JSONBody[CreateEndpoint],
        caller: NamedDependency[Caller],
        webhook_store: NamedDependency[WebhookStore],
        settings: NamedDependency[ConsoleSettings],
        now: NamedDependency[datetime],
    ) -> EndpointWithSecret:
        url = await checked_url(data.url, settings.webhook_urls)
        if await webhook_store.count_endpoints(caller.project) >= settings.max_webhook_endpoints:
            raise Conflict(
                f"project has {settings.max_webhook_endpoints} webhook endpoints already; "
                "delete one first",
                code="webhook_endpoint_limit",
            )
        secret = new_signing_secret()
        doc = endpoint_doc(
            new_id("we"),
            caller.project,
            caller.owner,
            url,
            data.name,
            list(dict.fromkeys(data.event_types)),
            settings.webhook_sealing.seal(secret),
            secret_hint(secret),
            now,
        )
        await webhook_store.insert_endpoint(doc)
        return EndpointWithSecret(
            **msgspec.structs.asdict(endpoint_out(doc)), signing_secret=secret
        )

    @get("/")
    async def list_endpoints(
        self,
        caller: NamedDependency[Caller],
        webhook_store: NamedDependency[WebhookStore],
        limit: PageLimit = 20,
        after: FromQuery[str | None] = None,
    ) -> EndpointList:
        docs, has_more = await webhook_store.list_endpoint_page(caller.project, limit, after)
        data = [endpoint_out(doc) for doc in docs]
        return EndpointList(data=data, has_more=has_more, **page_ends(data))

    @get("/{endpoint_id:str}")
    async def get_endpoint(
        self,
        endpoint_id: FromPath[str],
        caller: NamedDependency[Caller],
        webhook_store: NamedDependency[WebhookStore],
    ) -> EndpointOut:
        return endpoint_out(await _endpoint(webhook_store, endpoint_id, caller))

    @post("/{endpoint_id:str}", status_code=200)
    async def update_endpoint(
        self,
        endpoint_id: FromPath[str],
        data: JSONBody[UpdateEndpoint],
        caller: NamedDependency[Caller],
        webhook_store: NamedDependency[WebhookStore],
        settings: NamedDependency[ConsoleSettings],
        now: NamedDependency[datetime],
    ) -> EndpointOut:
        doc = await _endpoint(webhook_store, endpoint_id, caller)
        fields: dict[str, Any] = {"updated_at": now}
        if data.url is not None:
            fields["url"] = await checked_url(data.url, settings.webhook_urls)
        if data.event_types is not None:
            fields["event_types"] = list(dict.fromkeys(data.event_types))
        if data.name is not None:
            fields["name"] = data.name
        if data.enabled is True:
            fields |= {"status": "enabled", "disabled_reason": None, "disabled_at": None}
            fields["consecutive_failures"] = 0
        elif data.enabled is False:
            fields |= {"status": "disabled", "disabled_reason": "disabled by the project"}
            fields["disabled_at"] = now
        if not await webhook_store.save_endpoint(
            endpoint_id, caller.project, doc["version"], fields
        ):
            raise Conflict("the endpoint changed meanwhile; retry", code="concurrent_update")
        return endpoint_out({**doc, **fields})

    @delete("/{endpoint_id:str}", status_code=200)
    async def delete_endpoint(
        self,
        endpoint_id: FromPath[str],
        caller: NamedDependency[Caller],
        webhook_store: NamedDependency[WebhookStore],
    ) -> EndpointDeleted:
        if not await webhook_store.delete_endpoint(endpoint_id, caller.project):
            await _endpoint(webhook_store, endpoint_id, caller)  # 404 when unknown
        return EndpointDeleted(id=endpoint_id)

    @post("/{endpoint_id:str}/rotate_secret", status_code=200)
    async def rotate_secret(
        self,
        endpoint_id: FromPath[str],
        caller: NamedDependency[Caller],
        webhook_store: NamedDependency[WebhookStore],
        settings: NamedDependency[ConsoleSettings],
        now: NamedDependency[datetime],
        data: JSONBody[RotateSecret | None] = None,
    ) -> EndpointWithSecret:
        doc = await _endpoint(webhook_store, endpoint_id, caller)
        keep = data.keep_old_secret_active_for_24_hours if data else False
        secret = new_signing_secret()
        kept = live_secrets_after(doc, now, keep_until=now + ROTATION_GRACE if keep else now)
        sealed = settings.webhook_sealing.seal(secret)
        secrets = [{"secret": sealed, "created_at": now, "expires_at": None}, *kept]
        fields = {
            "signing_secrets": secrets,
            "signing_secret_hint": secret_hint(secret),
            "updated_at": now,
        }
        if not await webhook_store.save_endpoint(
            endpoint_id, caller.project, doc["version"], fields
        ):
            raise Conflict("the endpoint changed meanwhile; retry", code="concurrent_update")
        out = endpoint_out({**doc, **fields})
        return EndpointWithSecret(**msgspec.structs.asdict(out), signing_secret=secret)

    @get("/{endpoint_id:str}/deliveries")
    async def list_deliveries(
        self,
        endpoint_id: FromPath[str],
        caller: NamedDependency[Caller],
        webhook_store: NamedDependency[WebhookStore],
        limit: PageLimit = 20,
        after: FromQuery[str | None] = None,
    ) -> DeliveryList:
        """The endpoint's delivery log, newest first: each delivery's attempts (time, status
        code, latency, error)."""
        await _endpoint(webhook_store, endpoint_id, caller)
        docs, has_more = await webhook_store.list_delivery_page(endpoint_id, limit, after)
        data = [delivery_out(doc) for doc in docs]
        return DeliveryList(data=data, has_more=has_more, **page_ends(data))


class AibrixWebhookController(WebhookEndpointController):
    """The same routes under `/api/v1/webhooks`."""

    path = "/webhooks"


@get("/webhook_event_types")
async def list_event_types() -> EventTypeList:
    return EventTypeList(data=list(EVENT_TYPES))


def webhook_routes(*, aibrix: bool) -> list[Any]:
    if aibrix:
        return [AibrixWebhookController]
    return [WebhookEndpointController, list_event_types]
