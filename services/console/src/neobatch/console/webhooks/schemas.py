"""Bodies of the webhook endpoint routes, in OpenAI's shape (`openai.types.webhooks`:
`WebhookEndpoint`, `WebhookEndpointWithSecret`, `DeletedWebhookEndpoint`) plus neobatch's
`status`, `disabled_reason` and the delivery log. A signing secret appears only in
`EndpointWithSecret`, the answer to a create or a rotation."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from neobatch.common.webhooks import EVENT_TYPES, MAX_URL_LENGTH
from neobatch.console.paging import PageEnds

EventType = Literal[
    "batch.completed", "batch.failed", "batch.expired", "batch.cancelled", "job.status_changed"
]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]
EventTypes = Annotated[list[EventType], Meta(min_length=1, max_length=len(EVENT_TYPES))]
Url = Annotated[str, Meta(min_length=1, max_length=MAX_URL_LENGTH)]
Name = Annotated[str, Meta(max_length=256)]


class CreateEndpoint(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: Url
    event_types: EventTypes
    name: Name = ""


class UpdateEndpoint(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fields to change; absent ones stay. `enabled: true` re-enables an endpoint the notifier
    disabled (its reason is cleared); `false` pauses it."""

    url: Url | None = None
    event_types: EventTypes | None = None
    name: Name | None = None
    enabled: bool | None = None


class RotateSecret(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenAI's parameter: keep the previous secret valid for 24 hours (deliveries carry a
    signature by each); false ends it at once."""

    keep_old_secret_active_for_24_hours: bool = False


class EndpointOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "webhook_endpoint"
    url: str
    name: str
    event_types: list[str]
    created_at: int
    updated_at: int | None = None
    signing_secret_hint: str | None = None
    status: str
    disabled_reason: str | None = None
    disabled_at: int | None = None


class EndpointWithSecret(EndpointOut, kw_only=True):
    """Shown once: the new secret (`whsec_...`)."""

    signing_secret: str


class EndpointList(PageEnds, kw_only=True):
    object: str = "list"
    data: list[EndpointOut]


class EndpointDeleted(msgspec.Struct, kw_only=True):
    id: str
    object: str = "webhook_endpoint.deleted"
    deleted: bool = True


class EventTypeList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[str]


class AttemptOut(msgspec.Struct, kw_only=True):
    at: int
    status_code: int | None
    latency_ms: int
    error: str | None = None


class DeliveryOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "webhook_delivery"
    webhook_id: str
    event_id: str
    event_type: str
    batch_id: str | None = None
    job_id: str
    status: str
    created_at: int
    next_attempt_at: int | None = None
    delivered_at: int | None = None
    attempt_count: int
    attempts: list[AttemptOut]
    error: str | None = None


class DeliveryList(PageEnds, kw_only=True):
    object: str = "list"
    data: list[DeliveryOut]
