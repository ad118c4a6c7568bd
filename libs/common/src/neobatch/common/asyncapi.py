"""The AsyncAPI document of every event: the contract integrations subscribe to.

Generated from the msgspec Structs in `contracts`, so it cannot drift from the code:
`python -m neobatch.common.asyncapi docs/asyncapi.json` (`./task docs`) writes it, and a
test fails when the committed file is not what the code generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from neobatch.common import contracts
from neobatch.common.contracts import ALL_EVENTS, Event
from neobatch.common.subjects import DUPLICATE_WINDOW_SECONDS, Namespace

# Who sends and who receives each event (DESIGN.md "Services").
FLOWS: dict[type[Event], tuple[str, tuple[str, ...]]] = {
    contracts.JobQueued: ("console", ("planner",)),
    contracts.JobCancelRequested: ("console", ("planner",)),
    contracts.JobStatusChanged: ("planner", ()),
    contracts.ProvisionRequested: ("planner", ("resource-manager",)),
    contracts.ProvisionReleaseRequested: ("planner", ("resource-manager",)),
    contracts.ProvisionRunning: ("resource-manager", ("planner",)),
    contracts.ProvisionFailed: ("resource-manager", ("planner",)),
    contracts.ProvisionLost: ("resource-manager", ("planner",)),
    contracts.ProvisionReleased: ("resource-manager", ("planner",)),
    contracts.BatchRequested: ("planner", ("runtime-agent",)),
    contracts.BatchCancelRequested: ("planner", ("runtime-agent",)),
    contracts.BatchStatusReported: ("runtime-agent", ("planner",)),
    contracts.BatchMachineDone: ("runtime-agent", ("planner",)),
    contracts.BatchMachineRemoved: ("planner", ("runtime-agent",)),
    contracts.BatchMachineWanted: ("runtime-agent", ("planner",)),
    contracts.BatchTerminal: ("runtime-agent", ("planner",)),
}


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""


def build_document(ns: Namespace | None = None) -> dict[str, Any]:
    ns = ns or Namespace()
    _, components = msgspec.json.schema_components(
        ALL_EVENTS, ref_template="#/components/schemas/{name}"
    )
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for event in ALL_EVENTS:
        name = event.__name__
        channel_id = event.subject.replace(".", "_")
        messages[name] = {
            "name": name,
            "title": event.subject,
            "summary": _first_line(event.__doc__) or f"The `{event.subject}` event.",
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {
                        "type": "string",
                        "description": "= event_id; JetStream drops duplicates",
                    }
                },
            },
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        channels[channel_id] = {
            "address": ns.subject(event),
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        sender, receivers = FLOWS[event]
        operations[f"{sender}_sends_{channel_id}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"{sender} publishes {event.subject} through its outbox",
        }
        for receiver in receivers:
            operations[f"{receiver}_receives_{channel_id}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"durable pull consumer {ns.durable(receiver, event)}",
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "neobatch events",
            "version": "1.0.0",
            "description": (
                f"Every event on JetStream stream `{ns.stream_name}` (subjects `{ns.prefix}.>`, "
                f"duplicate window {DUPLICATE_WINDOW_SECONDS:.0f} s). Each carries `event_id` (also its "
                "`Nats-Msg-Id`), a schema `version` and `occurred_at`. `job.status_changed` is the "
                "integration feed: one event per job transition."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": components},
    }


def render(ns: Namespace | None = None) -> str:
    return json.dumps(build_document(ns), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0] if args else "docs/asyncapi.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
