"""``./task bench:jobs-list [-- --jobs 10000 --mongo-url URL]``: the job list the web console
pages through, over 10,000 jobs.

Starts NATS, the database (SecantusDB, or the MongoDB at ``--mongo-url``) and the console; creates
one job through the API and copies its document ``--jobs`` times straight into ``jobs`` (own ids,
times two to a second, one in 50 ``failed``); then pages through every job, 100 a page, as the
web console's "Older" button does (``limit`` + ``after``), and through the failed ones
(``?status=failed``). Checks each job is seen once, newest first, and prints the time per page
(median, slowest, first and last pages: a cursor is a seek, so the last page should cost what
the first does).

On MongoDB each page is one range of the `project_newest_first` (or, filtered,
`project_status_newest_first`) index. SecantusDB, the local stack's server, fetches every
document of the index range and sorts them itself, so there a page costs a read of the whole
project's jobs: measured here to show the cost is flat with depth, not that it is small.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

from neobatch.sim.devstack import Ports, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient, batch_lines, sim_engine_template

PAGE = 100
EVERY_FAILED = 50
DB = "bench_jobs"


def insert_jobs(mongo_url: str, template: dict[str, Any], jobs: int) -> list[str]:
    """`jobs` copies of `template`, oldest first; their ids."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    try:
        collection = client[DB]["jobs"]
        collection.delete_one({"_id": template["_id"]})
        ids, docs = [], []
        for i in range(jobs):
            job_id = f"job_{i:08d}"
            ids.append(job_id)
            docs.append(
                {
                    **template,
                    "_id": job_id,
                    "batch_id": f"batch_{i:08d}",
                    "created_at": template["created_at"] + timedelta(seconds=i // 2),
                    "status": "failed" if i % EVERY_FAILED == 0 else "completed",
                }
            )
        for start in range(0, jobs, 2000):
            collection.insert_many(docs[start : start + 2000])
        return ids
    finally:
        client.close()


def walk(http: httpx.Client, params: dict[str, Any]) -> tuple[list[str], list[float]]:
    """Every page, newest first: the ids seen and each page's seconds."""
    seen: list[str] = []
    times: list[float] = []
    after = None
    while True:
        query = {**params, "limit": PAGE, **({"after": after} if after else {})}
        started = time.perf_counter()
        response = http.get("/api/v1/jobs", params=query)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
        page = response.json()
        seen += [job["id"] for job in page["jobs"]]
        if not page["has_more"]:
            return seen, times
        after = page["last_id"]


def report(label: str, times: list[float]) -> None:
    ms = [t * 1000 for t in times]
    print(
        f"{label:>16}: {len(ms)} pages, median {statistics.median(ms):.0f} ms, "
        f"slowest {max(ms):.0f} ms, first {ms[0]:.0f} ms, last {ms[-1]:.0f} ms",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neobatch.sim.bench.jobs_list")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--mongo-url", default=None, help="a MongoDB replica set to use instead")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nb-bench-jobs-") as run_dir:
        env = {"NEOBATCH_DB": DB}
        stack = start_stack(
            Path(run_dir), Ports.free(), env, services=("console",), mongo_url=args.mongo_url
        )
        try:
            setup = ConsoleClient.for_stack(stack)
            model_id = setup.ensure_model()
            setup.create_template(model_id, sim_engine_template("bench", model_id))
            made = setup.create_job(setup.upload(batch_lines(2)), model_id, "bench")
            setup.close()
            client: MongoClient[dict[str, Any]] = MongoClient(stack.mongo_url)
            template = client[DB]["jobs"].find_one({"_id": made["id"]})
            client.close()
            assert template is not None
            started = time.perf_counter()
            ids = insert_jobs(stack.mongo_url, template, args.jobs)
            print(f"inserted {args.jobs} jobs in {time.perf_counter() - started:.1f} s", flush=True)
            newest_first = list(reversed(ids))
            headers = {"Authorization": f"Bearer {stack.api_key}"}
            with httpx.Client(base_url=stack.console_url, headers=headers, timeout=120) as http:
                seen, times = walk(http, {})
                assert seen == newest_first, "every job once, newest first"
                report("all jobs", times)
                failed, failed_times = walk(http, {"status": "failed"})
                assert failed == [i for i in newest_first if int(i[4:]) % EVERY_FAILED == 0]
                report("status=failed", failed_times)
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
