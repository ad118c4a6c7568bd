"""Two instances each of planner, resource-manager and runtime-agent on one NATS and one database.

24 jobs run to completion through the stack's services plus a second process of each of the
three, all sharing the durable consumers and the database. Checked afterwards: every job
completed once (one `completed` transition in the event feed), one provision per job and no SSH
pool host leased to two provisions at overlapping times, every request's result recorded once
and every request dispatched once across both agents (their /metrics counters sum to exactly
the number of requests: a batch run by two agents would count twice).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from neobatch.runtime_agent.results.pages import unpack_lines
from neobatch.sim.devstack import SERVICE_MODULES, Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient, batch_lines, sim_engine_template
from neobatch.sim.testing.servers import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    start_python_module,
)
from neobatch.sim.testing.waiting import wait_until

# Three rounds over the POOL_HOSTS hosts: each host is handed from one provision to the next
# twice or more (what the overlap check compares), and the jobs' events are shared out over both
# instances of each service (50 jobs proved nothing more and took twice as long).
JOBS = 24
REQUESTS = 4
POOL_HOSTS = 8
SCALED = ("planner", "resource-manager", "runtime-agent")
DB = "scale"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = Ports.free()
    # One SSH host process, entered in the pool under several users: the pool leases entries,
    # so this is POOL_HOSTS machines to the resource-manager; engine ports differ per job.
    pool = ",".join(f"u{i}@{LOOPBACK}:{ports.ssh}" for i in range(POOL_HOSTS))
    env = {
        "NEOBATCH_DB": DB,
        "NEOBATCH_SSH_POOL": pool,
        "NEOBATCH_METRICS_CACHE_SECONDS": "0",
        "MAX_CONCURRENT_PROVISIONING": str(POOL_HOSTS),
    }
    with start_stack(tmp_path_factory.mktemp("stack"), ports, env) as started:
        yield started


@pytest.fixture(scope="module")
def instances(stack: Stack) -> Iterator[dict[str, list[str]]]:
    """Health URLs of both instances of each scaled service (the stack's and a second one)."""
    extra: list[ManagedProcess] = []
    urls: dict[str, list[str]] = {name: [stack.health_url(name)] for name in SCALED}
    try:
        for name in SCALED:
            port = free_port()
            extra.append(
                start_python_module(
                    SERVICE_MODULES[name],
                    env={**stack.env, "NEOBATCH_HEALTH_PORT": str(port)},
                    log_path=stack.log_path(f"{name}-2"),
                )
            )
            urls[name].append(f"http://{LOOPBACK}:{port}")

        def all_ready() -> bool:
            dead = [p.name for p in extra if not p.alive()] + stack.dead_components()
            assert not dead, f"exited: {dead}"
            return all(ready(url) for group in urls.values() for url in group)

        wait_until_sync(all_ready, 60, "all six instances ready")
        yield urls
    finally:
        for process in extra:
            process.stop()


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=3, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_sync(predicate: Any, timeout: float, message: str) -> Any:
    return asyncio.run(wait_until(predicate, timeout, interval=0.2, message=message))


def counter(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` at url/metrics whose labels include `labels`."""
    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_jobs_complete_once_with_two_instances_of_each_service(
    stack: Stack, instances: dict[str, list[str]]
) -> None:
    console = ConsoleClient.for_stack(stack)
    model_id = console.ensure_model()
    file_id = console.upload(batch_lines(REQUESTS))
    jobs = []
    for i in range(JOBS):
        # A template per job: its own engine port, so engines of concurrent jobs never clash.
        name = f"scale-{i}"
        console.create_template(model_id, sim_engine_template(name, model_id, latency_ms=1))
        jobs.append(console.create_job(file_id, model_id, name)["id"])
    ended = {job_id: console.wait_settled(job_id, 240) for job_id in jobs}
    console.close()
    for job_id, job in ended.items():
        assert job["status"] == "completed", (job_id, job["status"], job.get("error_message"))
        assert job["request_counts"] == {"total": REQUESTS, "completed": REQUESTS, "failed": 0}

    with MongoClient(stack.mongo_url, tz_aware=True) as client:
        db = client[DB]
        check_completed_once(db, jobs)
        check_machines(db, jobs)
        check_results(db, jobs)

    agents = instances["runtime-agent"]
    dispatched = [counter(url, "neobatch_dispatch_requests_total") for url in agents]
    print(f"\nrequests dispatched per agent: {dispatched}")
    assert sum(dispatched) == JOBS * REQUESTS, dispatched
    # Both processes of every scaled service took part.
    for name, urls in instances.items():
        handled = [counter(url, "neobatch_events_handled_total", service=name) for url in urls]
        print(f"{name}: events handled per instance {handled}")
        assert all(n > 0 for n in handled), (name, handled)
    assert all(n > 0 for n in dispatched), dispatched


def check_completed_once(db: Any, jobs: list[str]) -> None:
    """The public feed has exactly one `completed` transition per job."""
    completed: Counter[str] = Counter()
    for entry in db["outbox"].find({"subject": {"$regex": r"\.job\.status_changed$"}}):
        event = json.loads(entry["payload"])
        if event.get("new_status") == "completed":
            completed[event["job_id"]] += 1
    assert {job_id: completed[job_id] for job_id in jobs} == dict.fromkeys(jobs, 1)


def check_machines(db: Any, jobs: list[str]) -> None:
    """One provision per job; a pool host is never held by two provisions at once; none left."""
    provisions = list(db["provisions"].find({"job_id": {"$in": jobs}}))
    per_job = Counter(p["job_id"] for p in provisions)
    assert per_job == dict.fromkeys(jobs, 1), [j for j, n in per_job.items() if n != 1]
    by_host: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
    for p in provisions:
        assert p["status"] == "released", p
        # From running to the release request: the host is surely leased throughout (it is
        # freed between releasing_at and released_at, so released_at may pass the next lease).
        by_host[p["provider_resource_id"]].append((p["running_at"], p["releasing_at"]))
    for host, spans in by_host.items():
        spans.sort()
        for (_, end), (start, _) in pairwise(spans):
            assert end <= start, f"{host} leased to two provisions at once"
    assert db["ssh_hosts"].count_documents({"leased_by": {"$ne": None}}) == 0


def check_results(db: Any, jobs: list[str]) -> None:
    """Every request of every batch has a recorded result, and nothing else is recorded.

    (A line may be stored twice, in two pages, if a flush was replayed; readers count it once.)
    """
    batch_ids = [j["batch_id"] for j in db["jobs"].find({"_id": {"$in": jobs}}, {"batch_id": 1})]
    assert len(batch_ids) == JOBS
    stored = {
        batch_id: {
            line
            for page in db["batch_results"].find({"batch_id": batch_id}, {"lines": 1})
            for line in unpack_lines(page["lines"])
        }
        for batch_id in batch_ids
    }
    assert stored == {batch_id: set(range(REQUESTS)) for batch_id in batch_ids}
