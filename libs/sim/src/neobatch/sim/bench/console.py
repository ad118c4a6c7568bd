"""`task bench:console`: the console's memory and responsiveness on hostile and large input.

Starts nats-server, the database and the console (no other service: a created batch only has
to be validated), then for each input file uploads it and creates a batch on it, printing the
time of each step, the console's peak RSS (VmHWM) after it, and the worst `/healthz` latency
seen while it ran (a thread asks every 50 ms). The files (issue 13, finding 3):

  empties: 3 lines, the second holding 30 million empty objects (~90 MB). It once drove the
           console to 2.39 GB and stalled /healthz 18.7 s; now it is refused as `line_too_long`
           without being decoded.
  200mib:  just under the 200 MiB upload limit in 50,000 ordinary requests (OpenAI's limits),
           every line decoded to its top-level keys and checked.
  many:    1,000,000 short requests (--requests), the ceiling the system is tested at for
           large batches (issue 15; the operator's limits are raised to it for this run):
           validation remembers every custom_id, so this is where its memory shows. The file is
           then read back through /v1/files/{id}/content, the streamed path an output file takes.

The goal is a console under 300 MB on any input up to the upload limit.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from neobatch.sim.bench.memory import peak_rss_mb
from neobatch.sim.devstack import Ports, start_stack
from neobatch.sim.devstack.scenario import MODEL, ConsoleClient, sim_engine_template

CHAT = "/v1/chat/completions"
UPLOAD_LIMIT = 200 * 1024 * 1024
REQUESTS = 50_000
MANY = 1_000_000
CEILING_BYTES = 2 * 1024**3


def _request(custom_id: str, content: str) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}
    return json.dumps(line).encode() + b"\n"


def write_empties(path: Path, objects: int) -> None:
    """Line 2 is a request whose body holds `objects` empty objects."""
    with path.open("wb") as out:
        out.write(_request("a", "hi"))
        out.write(b'{"custom_id":"b","method":"POST","url":"' + CHAT.encode() + b'","body":{"a":[')
        piece = b"{}," * 1_000_000
        for _ in range(objects // 1_000_000):
            out.write(piece)
        out.write(b"{}]}}\n")
        out.write(_request("c", "hi"))


def write_large(path: Path, size: int, requests: int) -> None:
    """`requests` ordinary lines adding up to just under `size` bytes."""
    overhead = len(_request("r00000", ""))
    content = "x" * (size // requests - overhead - 1)
    with path.open("wb") as out:
        for i in range(requests):
            out.write(_request(f"r{i:05d}", content))


def write_many(path: Path, requests: int) -> None:
    """`requests` short lines, `request-1` to `request-N`, as a large batch has them."""
    with path.open("wb") as out:
        for first in range(1, requests + 1, 10_000):
            last = min(first + 10_000, requests + 1)
            out.write(b"".join(_request(f"request-{i}", "hi") for i in range(first, last)))


def read_back(http: httpx.Client, file_id: str) -> int:
    """Stream a file's content from the console; its line count."""
    lines = 0
    with http.stream("GET", f"/v1/files/{file_id}/content", timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            lines += chunk.count(b"\n")
    return lines


@contextmanager
def watch_health(url: str, interval: float = 0.05) -> Iterator[Callable[[], float]]:
    """Ask `url` every `interval` s in a thread; yields a reader of the worst latency (s)."""
    worst = [0.0]
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.get(url)
                worst[0] = max(worst[0], time.perf_counter() - started)
                stop.wait(interval)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield lambda: worst[0]
    finally:
        stop.set()
        thread.join()


def step(label: str, pid: int, health_url: str, action: Callable[[], Any]) -> Any:
    with watch_health(health_url) as worst:
        started = time.perf_counter()
        result = action()
        elapsed = time.perf_counter() - started
        print(
            f"{label:34s} {elapsed:7.2f} s   console peak RSS {peak_rss_mb(pid):7.1f} MB"
            f"   worst /healthz {worst() * 1000:8.1f} ms",
            flush=True,
        )
    return result


def upload(http: httpx.Client, path: Path) -> str:
    with path.open("rb") as content:
        files = {"file": (path.name, content, "application/jsonl")}
        response = http.post("/v1/files", data={"purpose": "batch"}, files=files, timeout=600)
    response.raise_for_status()
    return str(response.json()["id"])


def create_batch(http: httpx.Client, file_id: str) -> dict[str, Any]:
    body = {
        "input_file_id": file_id,
        "endpoint": CHAT,
        "completion_window": "24h",
        "metadata": {"neobatch.template_name": "bench"},
    }
    response = http.post("/v1/batches", json=body, timeout=600)
    response.raise_for_status()
    return dict(response.json())


def outcome(batch: dict[str, Any]) -> str:
    errors = (batch.get("errors") or {}).get("data") or []
    first = f" ({errors[0]['code']} at line {errors[0]['line']})" if errors else ""
    return f"{batch['status']}, {batch['request_counts']['total']} requests{first}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neobatch.sim.bench.console", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--empties", type=int, default=30_000_000, help="objects on line 2")
    parser.add_argument("--size", type=int, default=UPLOAD_LIMIT - 64 * 1024)
    parser.add_argument("--requests", type=int, default=MANY, help="lines of the `many` file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nb-bench-console-") as run_dir:
        root = Path(run_dir)
        print("writing the input files ...", flush=True)
        empties, large, many = root / "empties.jsonl", root / "large.jsonl", root / "many.jsonl"
        write_empties(empties, args.empties)
        write_large(large, args.size, REQUESTS)
        write_many(many, args.requests)
        ports = Ports.free()
        env = {
            "NEOBATCH_DB": "bench",
            "NEOBATCH_SPOOL_DIR": str(root),
            # The operator's ceiling for large batches; the other two files are within OpenAI's.
            "NEOBATCH_MAX_BATCH_REQUESTS": str(max(args.requests, REQUESTS)),
            "NEOBATCH_MAX_BATCH_INPUT_BYTES": str(CEILING_BYTES),
            "NEOBATCH_MAX_UPLOAD_BYTES": str(CEILING_BYTES),
        }
        stack = start_stack(root / "stack", ports, env, services=("console",))
        try:
            pid = stack.processes["console"].pid
            health = f"{stack.console_url}/healthz"
            setup = ConsoleClient.for_stack(stack)
            model_id = setup.ensure_model()
            setup.create_template(model_id, sim_engine_template("bench", model_id))
            setup.close()
            print(f"console started: peak RSS {peak_rss_mb(pid):.1f} MB", flush=True)
            http = httpx.Client(
                base_url=stack.console_url, headers={"Authorization": f"Bearer {stack.api_key}"}
            )
            file_ids: dict[str, str] = {}
            for name, path in (("empties", empties), ("200mib", large), ("many", many)):
                mb = path.stat().st_size / 1e6
                file_id = step(
                    f"upload {name} ({mb:.0f} MB)", pid, health, lambda p=path: upload(http, p)
                )
                file_ids[name] = file_id
                batch = step(
                    f"create batch on {name}", pid, health, lambda f=file_id: create_batch(http, f)
                )
                print(f"{'':34s} → {outcome(batch)}", flush=True)
            # Only the `many` file is read back: it is the one that takes the output file's path.
            lines = step("read back many", pid, health, lambda: read_back(http, file_ids["many"]))
            print(f"{'':34s} → {lines} lines", flush=True)
            http.close()
            print(f"console peak RSS over the run: {peak_rss_mb(pid):.1f} MB (goal < 300)")
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
