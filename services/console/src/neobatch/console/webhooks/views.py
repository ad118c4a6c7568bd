"""Webhook endpoints and deliveries as the API shows them. Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from neobatch.console.webhooks.schemas import AttemptOut, DeliveryOut, EndpointOut
from neobatch.console.wire import unix_seconds, unix_seconds_or_none

# Attempts a delivery shows (the newest; the count says how many there were).
SHOWN_ATTEMPTS = 50


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def live_secrets_after(
    doc: dict[str, Any], now: datetime, *, keep_until: datetime
) -> list[dict[str, Any]]:
    """The endpoint's secrets still valid at `now`, each ending by `keep_until` at the latest
    (a rotation: the current one becomes the old one, valid `keep_until`; none if that is now)."""
    kept = []
    for item in doc.get("signing_secrets") or []:
        expires = item.get("expires_at")
        ends = keep_until if expires is None else min(_aware(expires), keep_until)
        if ends > now:
            kept.append({**item, "expires_at": ends})
    return kept


def endpoint_out(doc: dict[str, Any]) -> EndpointOut:
    return EndpointOut(
        id=doc["_id"],
        url=doc["url"],
        name=doc.get("name") or "",
        event_types=list(doc.get("event_types") or []),
        created_at=unix_seconds(doc["created_at"]),
        updated_at=unix_seconds_or_none(doc.get("updated_at")),
        signing_secret_hint=doc.get("signing_secret_hint"),
        status=doc.get("status") or "enabled",
        disabled_reason=doc.get("disabled_reason"),
        disabled_at=unix_seconds_or_none(doc.get("disabled_at")),
    )


def delivery_out(doc: dict[str, Any]) -> DeliveryOut:
    attempts = doc.get("attempts") or []
    return DeliveryOut(
        id=doc["_id"],
        webhook_id=doc["webhook_id"],
        event_id=doc["event_id"],
        event_type=doc["event_type"],
        batch_id=doc.get("batch_id"),
        job_id=doc.get("job_id") or "",
        status=doc["status"],
        created_at=unix_seconds(doc["created_at"]),
        next_attempt_at=unix_seconds_or_none(doc.get("next_attempt_at"))
        if doc["status"] == "pending"
        else None,
        delivered_at=unix_seconds_or_none(doc.get("delivered_at")),
        attempt_count=int(doc.get("attempt_count") or len(attempts)),
        attempts=[
            AttemptOut(
                at=unix_seconds(a["at"]),
                status_code=a.get("status_code"),
                latency_ms=int(a.get("latency_ms") or 0),
                error=a.get("error"),
            )
            for a in attempts[-SHOWN_ATTEMPTS:]
        ],
        error=doc.get("error"),
    )
