"""Print every job's status changes from neobatch's event feed, in order (docs/events.md).

An integration's subscriber in one file, needing only nats-py (`pip install nats-py`):

    # once, by an operator with the services' NATS login: create the durable consumer
    NATS_URL=nats://neobatch:SERVICES_PASSWORD@nats:4222 python examples/subscriber.py --create-consumer
    # then, as the integration (deploy/ gives the `integration` user nothing else)
    NATS_URL=nats://integration:PASSWORD@nats:4222 python examples/subscriber.py

It prints one line per status change, e.g.

    2026-12-03T16:05:01.123Z job_3f9a… queued -> resource_preparing (v2)

What it shows (each is a rule of the feed, docs/events.md):
- a *durable* pull consumer with *explicit acks*: a message is acknowledged only once handled
  (printed), so a subscriber that dies re-reads what it had not finished;
- delivery is *at least once*: the same event may come twice; `event_id` identifies it and
  `job_version` tells a stale copy from a new change;
- order is *per job*, restored here: a change is printed once the job's previous status is the
  one it starts from (`old_status`); one whose predecessor is missing is held up to
  `--hold-seconds`, then printed anyway (in `job_version` order), since a predecessor older than
  the stream's retention never comes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

SCHEMA_VERSION = 1  # the payload `version` this subscriber understands


@dataclass
class Held:
    event: dict[str, Any]
    msg: Any  # the nats Msg to acknowledge once the event is printed
    arrived: float


@dataclass
class JobState:
    status: str | None = None  # the last status printed (None: none yet)
    version: int = 0  # its job_version
    pending: dict[str, Held] = field(default_factory=dict)  # by event_id


class Feed:
    """Per-job ordering and de-duplication; no I/O, so it is easy to reason about."""

    def __init__(self, hold_seconds: float, max_jobs: int = 10_000) -> None:
        self.hold_seconds = hold_seconds
        self.max_jobs = max_jobs  # bounded memory: the least recently seen idle jobs go first
        self.jobs: OrderedDict[str, JobState] = OrderedDict()

    def add(self, event: dict[str, Any], msg: Any, now: float) -> bool:
        """Take one delivery; False when it is a copy of a change already printed."""
        job = self.jobs.setdefault(event["job_id"], JobState())
        self.jobs.move_to_end(event["job_id"])
        if 0 < event.get("job_version", 0) <= job.version:
            return False  # a redelivery (or a late copy) of what this job is already past
        job.pending[event["event_id"]] = Held(event, msg, now)  # a copy replaces its twin
        self._forget_idle_jobs()
        return True

    def ready(self, now: float) -> list[Held]:
        """The changes that may be printed now, each job's in order."""
        out: list[Held] = []
        for job in self.jobs.values():
            while job.pending:
                # Oldest first by job_version (0 on old producers: then by time).
                waiting = sorted(
                    job.pending.values(),
                    key=lambda h: (h.event.get("job_version", 0), h.event["occurred_at"]),
                )
                follows = [h for h in waiting if h.event["old_status"] == job.status]
                if follows:
                    nxt = follows[0]
                elif now - min(h.arrived for h in waiting) >= self.hold_seconds:
                    nxt = waiting[0]  # its predecessor is not coming: accept the gap
                else:
                    break  # wait a little for the missing change
                del job.pending[nxt.event["event_id"]]
                job.status = nxt.event["new_status"]
                job.version = max(job.version, nxt.event.get("job_version", 0))
                out.append(nxt)
        return out

    def _forget_idle_jobs(self) -> None:
        while len(self.jobs) > self.max_jobs:
            job_id, job = next(iter(self.jobs.items()))
            if job.pending:
                break
            del self.jobs[job_id]


def describe(event: dict[str, Any]) -> str:
    old = event["old_status"] or "(new)"
    reason = f", {event['reason']}" if event.get("reason") else ""
    return (
        f"{event['occurred_at']} {event['job_id']} {old} -> {event['new_status']}"
        f" (v{event.get('job_version', 0)}{reason})"
    )


async def create_consumer(js: Any, stream: str, durable: str, subject: str) -> None:
    """Create (or update) the integration's durable consumer. Needs a login that may manage
    consumers (the services'); the `integration` user of deploy/ may not."""
    config = ConsumerConfig(
        durable_name=durable,
        name=durable,
        filter_subject=subject,  # the public feed only
        deliver_policy=DeliverPolicy.ALL,  # from the oldest event the stream keeps (7 days)
        ack_policy=AckPolicy.EXPLICIT,  # a message counts as handled only once acknowledged
        ack_wait=30,  # unacknowledged for 30 s: delivered again
        max_deliver=-1,  # never given up on: the integration decides what it cannot handle
        max_ack_pending=1000,
    )
    await js.add_consumer(stream, config=config)


async def run(args: argparse.Namespace) -> int:
    stream = f"{args.namespace.upper().replace('.', '_').replace('-', '_')}_EVENTS"
    subject = f"{args.namespace}.job.status_changed"
    # Replies (consumer lookups, pulled messages) arrive on our own inbox prefix: the only
    # subjects the integration user may subscribe to.
    nc = await nats.connect(
        args.url,
        inbox_prefix=args.inbox_prefix,
        name="neobatch-feed-example",
        max_reconnect_attempts=-1,
    )
    js = nc.jetstream()
    try:
        if args.create_consumer:
            try:
                await create_consumer(js, stream, args.durable, subject)
            except nats.js.errors.NotFoundError:
                print(f"no stream {stream} yet: start the services first", file=sys.stderr)
                return 2
            print(f"durable {args.durable!r} on {stream} ({subject}) ready", file=sys.stderr)
            return 0
        try:
            await js.consumer_info(stream, args.durable)
        except (nats.js.errors.NotFoundError, nats.errors.TimeoutError, TimeoutError):
            print(
                f"no durable consumer {args.durable!r} on {stream} that this login may read;"
                " an operator creates it with --create-consumer (docs/events.md)",
                file=sys.stderr,
            )
            return 2
        sub = await js.pull_subscribe_bind(args.durable, stream=stream)
        print(f"reading {subject} through durable {args.durable!r}", file=sys.stderr, flush=True)
        feed = Feed(args.hold_seconds)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch=64, timeout=1)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []  # nothing new within a second: still release held changes below
            now = time.monotonic()
            for msg in msgs:
                event = json.loads(msg.data)
                if event.get("version", 1) != SCHEMA_VERSION:
                    # A breaking change comes with a new version (docs/events.md); not ours.
                    print(f"skipping payload version {event.get('version')}", file=sys.stderr)
                    await msg.ack()
                elif not feed.add(event, msg, now):
                    await msg.ack()  # a duplicate: acknowledge it, print nothing
            for held in feed.ready(now):
                print(describe(held.event), flush=True)
                await held.msg.ack()  # only now: a crash before this re-delivers it
        return 0
    finally:
        await nc.drain()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--namespace", default=os.environ.get("NEOBATCH_NAMESPACE", "neobatch"))
    parser.add_argument("--durable", default="integration")
    parser.add_argument("--inbox-prefix", default="_INBOX_integration")
    parser.add_argument("--hold-seconds", type=float, default=5.0)
    parser.add_argument("--create-consumer", action="store_true")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
