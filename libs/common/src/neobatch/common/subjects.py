"""Subject names, the one JetStream stream, and consumer delivery settings."""

from __future__ import annotations

import msgspec

from neobatch.common.contracts import Event

# Longer than the outbox relay's worst case (lease expiry + retries), so a re-publish of an
# event whose first publish was never marked sent is still recognised as a duplicate.
DUPLICATE_WINDOW_SECONDS = 600.0
# Bounded redelivery: after this many attempts the message is dead-lettered (DESIGN rule 2).
MAX_DELIVER = 8
# How long a consumer may hold a message before JetStream redelivers it.
ACK_WAIT_SECONDS = 60.0
# Delayed retries after a failed attempt n (1-based): 0.5 s, 1 s, 2 s … capped.
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 15.0


class Namespace(msgspec.Struct, frozen=True):
    """A prefix for subjects and the stream, so several stacks can share one nats-server."""

    prefix: str = "neobatch"

    @property
    def stream_name(self) -> str:
        return f"{self.prefix.upper().replace('.', '_').replace('-', '_')}_EVENTS"

    @property
    def stream_subjects(self) -> list[str]:
        return [f"{self.prefix}.>"]

    @property
    def dead_letter_stream_name(self) -> str:  # subjects `dlq.<prefix>.>`
        return f"{self.stream_name}_DLQ"

    def subject(self, event: type[Event] | Event) -> str:
        return f"{self.prefix}.{event.subject}"

    def durable(self, service: str, event: type[Event]) -> str:
        # One durable per (service, subject): each consumer sees only its own subject.
        return f"{service}-{event.subject.replace('.', '_')}"


def retry_delay_seconds(attempt: int) -> float:
    """Delay before redelivering a message that failed on delivery `attempt` (1-based)."""
    return min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, attempt - 1))
