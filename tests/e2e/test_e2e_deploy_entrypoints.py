"""The exact command each service Dockerfile runs, started against the local stack.

No Docker engine exists here, so the images cannot be built; this runs what they would run:
each Dockerfile's CMD (parsed from the file, not repeated here) with the ENV it sets, on this
machine's venv (`python` on PATH, as `/app/.venv/bin` is in the image), against a local
nats-server and Mongo-wire server. Then: /readyz turns ready; stopping nats-server turns every
service not-ready while /healthz stays up; nats-server back makes them ready again; each
/metrics parses as Prometheus text and counts the jobs that were run; the image HEALTHCHECK
command passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from neobatch.sim.devstack import Ports, Stack, start_stack
from neobatch.sim.devstack.scenario import ConsoleClient, batch_lines, sim_engine_template
from neobatch.sim.testing.servers import LOOPBACK, ManagedProcess, free_port, wait_port
from neobatch.sim.testing.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
SERVICES = ("console", "planner", "resource-manager", "runtime-agent", "notifier")
JOBS = 3
REQUESTS = 6


@dataclass(frozen=True)
class Dockerfile:
    cmd: list[str]
    env: dict[str, str]
    healthcheck: list[str] | None


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def parse_dockerfile(path: Path) -> Dockerfile:
    """CMD/ENTRYPOINT, ENV and HEALTHCHECK of the final stage, including the shared runtime base."""
    pairs = instructions(path)
    final = max(i for i, (word, _) in enumerate(pairs) if word == "FROM")
    base_from = pairs[final][1]
    stage = pairs[final + 1 :]
    if "RUNTIME_IMAGE" in base_from:  # FROM ${RUNTIME_IMAGE}: base.Dockerfile's runtime stage
        base = instructions(DOCKER / "base.Dockerfile")
        start = next(i for i, (w, rest) in enumerate(base) if w == "FROM" and "AS runtime" in rest)
        stage = base[start + 1 :] + stage
    env: dict[str, str] = {}
    cmd: list[str] = []
    entrypoint: list[str] = []
    healthcheck = None
    for word, rest in stage:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
        elif word == "CMD":
            cmd = json.loads(rest)
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "HEALTHCHECK":
            healthcheck = json.loads(rest[rest.index("CMD") + 3 :])
    assert cmd or entrypoint, f"{path} runs nothing"
    return Dockerfile(entrypoint + cmd, env, healthcheck)


@dataclass
class Service:
    name: str
    process: ManagedProcess
    url: str
    env: dict[str, str]
    healthcheck: list[str] | None
    # Where /metrics is served: the health port, or the console's NEOBATCH_METRICS_PORT.
    metrics_url: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = Ports.free()
    pool = ",".join(f"u{i}@{LOOPBACK}:{ports.ssh}" for i in range(JOBS))
    env = {
        "NEOBATCH_DB": "deploy",
        "NEOBATCH_SSH_POOL": pool,
        "NEOBATCH_METRICS_CACHE_SECONDS": "0",
    }
    with start_stack(tmp_path_factory.mktemp("stack"), ports, env, services=()) as started:
        yield started


@pytest.fixture(scope="module")
def services(stack: Stack) -> Iterator[dict[str, Service]]:
    venv_bin = str(Path(sys.executable).parent)
    running: dict[str, Service] = {}
    try:
        for name in SERVICES:
            image = parse_dockerfile(DOCKER / f"{name}.Dockerfile")
            port = stack.ports.console if name == "console" else free_port()
            env = {
                **{k: v for k, v in image.env.items() if k != "PATH"},
                **stack.env,
                # The image listens on 0.0.0.0 at fixed ports; here: loopback, free ports.
                "NEOBATCH_HEALTH_HOST": LOOPBACK,
                "NEOBATCH_HEALTH_PORT": str(port),
                "NEOBATCH_CONSOLE_HOST": LOOPBACK,
                "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            }
            metrics_port = port
            if "NEOBATCH_METRICS_PORT" in image.env:  # the console's own metrics listener
                metrics_port = free_port()
                env["NEOBATCH_METRICS_PORT"] = str(metrics_port)
            log = stack.run_dir / "logs" / f"image-{name}.log"
            process = ManagedProcess(image.cmd, log, env=env, name=name)
            running[name] = Service(
                name,
                process,
                f"http://{LOOPBACK}:{port}",
                env,
                image.healthcheck,
                f"http://{LOOPBACK}:{metrics_port}/metrics",
            )
        for service in running.values():
            wait_port(LOOPBACK, int(service.url.rsplit(":", 1)[1]), 60, process=service.process)
        yield running
    finally:
        for service in running.values():
            service.process.stop()


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=3, trust_env=False).status_code
    except httpx.HTTPError:
        return None


def wait_all(services: dict[str, Service], path: str, code: int, timeout: float) -> None:
    def done() -> dict[str, int | None] | bool:
        codes = {name: status(s.url + path) for name, s in services.items()}
        dead = [name for name, s in services.items() if not s.process.alive()]
        assert not dead, f"{dead} exited; see {[str(services[n].process.log_path) for n in dead]}"
        return all(c == code for c in codes.values()) or False

    asyncio.run(wait_until(done, timeout, interval=0.2, message=f"every {path} → {code}"))


def test_every_dockerfile_command_starts_a_service_that_turns_ready(
    services: dict[str, Service],
) -> None:
    assert [s.process.args[:2] for s in services.values()] == [["python", "-m"]] * len(SERVICES)
    wait_all(services, "/readyz", 200, 60)
    for service in services.values():
        assert status(service.url + "/healthz") == 200
        # The image's HEALTHCHECK command, as Docker would run it inside the container.
        assert service.healthcheck is not None, service.name
        done = subprocess.run(service.healthcheck, env=service.env, capture_output=True, timeout=30)
        assert done.returncode == 0, (service.name, done.stderr)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_parse_and_count_the_jobs_run(stack: Stack, services: dict[str, Service]) -> None:
    wait_all(services, "/readyz", 200, 60)
    console = ConsoleClient.for_stack(stack)
    model_id = console.ensure_model()
    jobs = []
    for i in range(JOBS):
        console.create_template(model_id, sim_engine_template(f"deploy-{i}", model_id))
        file_id = console.upload(batch_lines(REQUESTS))
        jobs.append(console.create_job(file_id, model_id, f"deploy-{i}")["id"])
    for job_id in jobs:
        job = console.wait_settled(job_id, 120)
        assert job["status"] == "completed", job
    console.close()

    # The console image serves /metrics on its metrics port only, not on the API port.
    assert status(services["console"].url + "/metrics") == 404
    for name, service in services.items():
        response = httpx.get(service.metrics_url, timeout=10, trust_env=False)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        got = samples(response.text)  # raises on anything that is not Prometheus text
        jobs_by_status = {
            dict(labels)["status"]: value for (metric, labels), value in got.items()
            if metric == "neobatch_jobs"
        }  # fmt: skip
        assert jobs_by_status == {"completed": JOBS}, (name, jobs_by_status)
        released = got[
            ("neobatch_provisions", frozenset({("provider", "ssh"), ("status", "released")}))
        ]
        assert released == JOBS, name
        assert (
            got[("neobatch_provisioning_seconds_count", frozenset({("provider", "ssh")}))] == JOBS
        )
        assert got[("neobatch_leased_machines", frozenset({("provider", "ssh")}))] == 0
        assert got[("neobatch_state_up", frozenset({("source", "nats")}))] == 1
        assert ("neobatch_outbox_lag_seconds", frozenset()) in got
    agent = samples(httpx.get(services["runtime-agent"].metrics_url, trust_env=False).text)
    assert (
        agent[("neobatch_dispatch_requests_total", frozenset({("outcome", "ok")}))]
        == JOBS * REQUESTS
    )
    assert agent[("neobatch_request_latency_seconds_count", frozenset())] == JOBS * REQUESTS
    planner = samples(httpx.get(services["planner"].metrics_url, trust_env=False).text)
    terminal = frozenset({("service", "planner"), ("subject", "batch.terminal")})
    assert planner[("neobatch_events_handled_total", terminal)] == JOBS


def test_readyz_follows_nats_going_away_and_coming_back(
    stack: Stack, services: dict[str, Service]
) -> None:
    wait_all(services, "/readyz", 200, 60)
    stack.processes["nats"].stop()
    wait_all(services, "/readyz", 503, 30)
    for service in services.values():
        assert status(service.url + "/healthz") == 200, service.name
    stack.restart("nats")
    wait_all(services, "/readyz", 200, 60)
