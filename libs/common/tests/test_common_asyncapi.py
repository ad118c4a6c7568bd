"""The committed AsyncAPI document is what the code generates, and describes every event."""

from __future__ import annotations

import json
from pathlib import Path

from neobatch.common.asyncapi import FLOWS, build_document, render
from neobatch.common.contracts import ALL_EVENTS

DOC = Path(__file__).resolve().parents[3] / "docs" / "asyncapi.json"


def test_committed_document_is_current() -> None:
    assert DOC.read_text() == render(), "docs/asyncapi.json is stale: run `./task docs`"


def test_every_event_has_a_channel_payload_schema_and_owner() -> None:
    document = build_document()
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {f"neobatch.{event.subject}" for event in ALL_EVENTS}
    assert set(FLOWS) == set(ALL_EVENTS)
    changed = document["components"]["schemas"]["JobStatusChanged"]
    assert {"job_id", "old_status", "new_status", "reason", "occurred_at", "event_id"} <= set(
        changed["properties"]
    )
    json.dumps(document)  # serialisable as published
