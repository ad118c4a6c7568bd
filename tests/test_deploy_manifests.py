"""The deploy files, read as data: who may reach NATS and MongoDB, with what credentials.

No cluster or Docker engine exists here (deploy/README.md), so these parse deploy/k8s/*.yaml
and deploy/compose.yaml and check what issue 13 found open: NATS and MongoDB without a login,
no NetworkPolicy (any pod in the cluster could rewrite keys, templates and events), /metrics
on the console's API port, and uploads spooled into a 64 Mi memory volume.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import yaml

from neobatch.common.settings import nats_servers
from neobatch.console.settings import ConsoleSettings
from neobatch.sim.testing.servers import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    nats_server_binary,
    wait_port,
)

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "deploy" / "compose.yaml"
SERVICES = ("console", "planner", "resource-manager", "runtime-agent", "notifier")
NAMESPACE = "neobatch"
NAMESPACE_LABELS = {"kubernetes.io/metadata.name": NAMESPACE}
NATS_PORT, MONGO_PORT, API_PORT, METRICS_PORT = 4222, 27017, 8080, 9090


@functools.cache
def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents() if doc["kind"] == kind]


def workloads() -> Iterator[tuple[str, dict[str, Any]]]:
    """(app label, pod template spec) of every Deployment, StatefulSet and Job."""
    for doc in documents():
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            template = doc["spec"]["template"]
            labels = template.get("metadata", {}).get("labels", {})
            yield labels.get("app", doc["metadata"]["name"]), template["spec"]


def pod_spec(app: str) -> dict[str, Any]:
    return next(spec for name, spec in workloads() if name == app)


def container_env(app: str) -> dict[str, dict[str, Any]]:
    container = pod_spec(app)["containers"][0]
    return {item["name"]: item for item in container.get("env", [])}


def config_map(name: str) -> dict[str, str]:
    return next(doc for doc in of_kind("ConfigMap") if doc["metadata"]["name"] == name)["data"]


# --- credentials --------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("variable", ["NATS_URL", "MONGO_URL"])
def test_every_service_gets_its_broker_and_database_url_from_a_secret(
    service: str, variable: str
) -> None:
    env = container_env(service)
    assert variable in env, f"{service} has no {variable} of its own (the ConfigMap's has none)"
    assert "secretKeyRef" in env[variable].get("valueFrom", {}), (service, env[variable])
    config = config_map("neobatch-config")
    assert variable not in config
    # No URL in the ConfigMap, with or without credentials.
    assert not [value for value in config.values() if "://" in value]


def test_nats_requires_a_login_from_a_secret() -> None:
    conf = config_map("nats-config")["nats.conf"]
    block = re.search(r"authorization\s*\{([^}]*)\}", conf)
    assert block, "nats.conf has no authorization block"
    assert re.search(r"user:\s*\$NATS_USER", block.group(1))
    assert re.search(r"password:\s*\$NATS_PASSWORD", block.group(1))
    # Clients must not be sent to gossiped servers their URL holds no credentials for.
    assert re.search(r"no_advertise:\s*true", conf)
    env = container_env("nats")
    for variable in ("NATS_USER", "NATS_PASSWORD"):
        assert "secretKeyRef" in env[variable]["valueFrom"], variable


def test_mongo_runs_with_authentication_and_a_keyfile_from_a_secret() -> None:
    spec = pod_spec("mongo")
    args = spec["containers"][0]["args"]
    assert "--auth" in args
    keyfile = args[args.index("--keyFile") + 1]
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts[str(Path(keyfile).parent)] == "keyfile"
    secret_volumes = {
        v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v
    }
    assert secret_volumes["keyfile-secret"] == "neobatch-mongo-admin"
    env = container_env("mongo")
    for variable in ("MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD"):
        assert env[variable]["valueFrom"]["secretKeyRef"]["name"] == "neobatch-mongo-admin"
    # The services never see the root login, only their own URL.
    for service in SERVICES:
        refs = {
            item["valueFrom"]["secretKeyRef"]["name"]
            for item in container_env(service).values()
            if "secretKeyRef" in item.get("valueFrom", {})
        }
        assert "neobatch-mongo-admin" not in refs, service


def test_no_credential_is_written_in_a_manifest() -> None:
    text = "\n".join(path.read_text() for path in K8S.glob("*.yaml"))
    assert not re.search(r"(nats|mongodb)://[^\s/@:'\"]+:[^\s/@'\"$]+@", text)
    assert not of_kind("Secret"), "Secrets are created out of band (deploy/README.md)"


# --- network policies ------------------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


# A source: (namespace labels, pod labels), or None for an address outside the cluster.
Source = tuple[Mapping[str, str], Mapping[str, str]] | None


def peer_admits(peer: Mapping[str, Any], source: Source) -> bool:
    if source is None:
        return "ipBlock" in peer
    namespace_labels, pod_labels = source
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        namespaces_ok = selector_matches(peer["namespaceSelector"], namespace_labels)
    else:  # a podSelector alone means this policy's own namespace
        namespaces_ok = namespace_labels.get("kubernetes.io/metadata.name") == NAMESPACE
    return namespaces_ok and selector_matches(peer.get("podSelector", {}), pod_labels)


def admitted(target_app: str, port: int, source: Source) -> bool:
    """What Kubernetes does: isolated once any Ingress policy selects the pod, then allowed
    only if some rule of a selecting policy admits the source on the port."""
    selecting = [
        policy
        for policy in of_kind("NetworkPolicy")
        if "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(policy["spec"]["podSelector"], {"app": target_app})
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get("from", [])
            if not peers or any(peer_admits(peer, source) for peer in peers):
                return True
    return False


def in_namespace(app: str) -> Source:
    return (NAMESPACE_LABELS, {"app": app})


OTHER_NAMESPACE = {"kubernetes.io/metadata.name": "team-b"}
SCRAPER_NAMESPACE = {"kubernetes.io/metadata.name": "monitoring", "neobatch.io/scrape": "true"}
# Pods that must not reach NATS or MongoDB: a debug pod here, a pod elsewhere that calls
# itself `console`, and an address outside the cluster.
STRANGERS: list[tuple[str, Source]] = [
    ("debug pod in the namespace", in_namespace("debug")),
    ("`console` of another namespace", (OTHER_NAMESPACE, {"app": "console"})),
    ("Prometheus", (SCRAPER_NAMESPACE, {"app": "prometheus"})),
    ("outside the cluster", None),
]


def test_only_the_four_services_reach_nats_and_mongo() -> None:
    for service in SERVICES:
        assert admitted("nats", NATS_PORT, in_namespace(service)), service
        assert admitted("mongo", MONGO_PORT, in_namespace(service)), service
    for who, source in STRANGERS:
        assert not admitted("nats", NATS_PORT, source), who
        assert not admitted("mongo", MONGO_PORT, source), who
        assert not admitted("nats", 6222, source), who  # the cluster routes
        assert not admitted("nats", 8222, source), who  # the monitoring port
    # What the servers themselves need: routes between NATS pods, replication, the init Job.
    assert admitted("nats", 6222, in_namespace("nats"))
    assert admitted("mongo", MONGO_PORT, in_namespace("mongo"))
    assert admitted("mongo", MONGO_PORT, in_namespace("mongo-rs-init"))
    # The Job carries the label the policy names.
    assert "mongo-rs-init" in dict(workloads())


def test_event_feed_namespaces_reach_the_nats_client_port_only() -> None:
    """A subscriber's namespace, labelled for the feed, reaches NATS's client port (where its
    login may only read the public events: tests/test_event_feed_permissions.py) and
    nothing else; the same pod without the label reaches nothing."""
    feed = ({"kubernetes.io/metadata.name": "crm", "neobatch.io/event-feed": "true"}, {"app": "x"})
    assert admitted("nats", NATS_PORT, feed)
    for port in (6222, 8222):
        assert not admitted("nats", port, feed)
    assert not admitted("mongo", MONGO_PORT, feed)
    for app in SERVICES:
        assert not admitted(app, METRICS_PORT, feed), app
    assert not admitted("nats", NATS_PORT, ({"kubernetes.io/metadata.name": "crm"}, {"app": "x"}))
    env = container_env("nats")
    assert env["NATS_INTEGRATION_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "neobatch-nats",
        "key": "integration-password",
    }


def test_only_the_console_api_is_reachable_from_outside() -> None:
    outside: list[Source] = [None, (OTHER_NAMESPACE, {"app": "x"}), in_namespace("debug")]
    for source in outside:
        assert admitted("console", API_PORT, source)
        assert not admitted("console", METRICS_PORT, source)
        for app in ("planner", "resource-manager", "runtime-agent", "nats", "mongo"):
            for port in (API_PORT, METRICS_PORT, NATS_PORT, MONGO_PORT, 6222, 8222):
                assert not admitted(app, port, source), (app, port, source)
    # Metrics: from the namespaces labelled for scraping only.
    scraper = (SCRAPER_NAMESPACE, {"app": "prometheus"})
    for app in SERVICES:
        assert admitted(app, METRICS_PORT, scraper), app


# --- the console: metrics port and upload spool --------------------------------------------


def quantity_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(text))
    assert match, text
    return int(match.group(1)) * units.get(match.group(2), 1)


def test_console_serves_metrics_on_its_own_port() -> None:
    spec = pod_spec("console")
    env = container_env("console")
    port = int(env["NEOBATCH_METRICS_PORT"]["value"])
    assert port != int(env["NEOBATCH_CONSOLE_PORT"]["value"])
    deployment = next(d for d in of_kind("Deployment") if d["metadata"]["name"] == "console")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    ports = {p["containerPort"] for p in spec["containers"][0]["ports"]}
    assert port in ports
    # The Service in front of the API does not carry the metrics port.
    service = next(s for s in of_kind("Service") if s["metadata"]["name"] == "console")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_console_spools_uploads_on_disk_sized_to_the_upload_limit() -> None:
    """Issue 13: /tmp was a 64 Mi memory volume; a 70 MB upload got 500 ENOSPC."""
    spec = pod_spec("console")
    env = container_env("console")
    # Where Python's tempfile (and so the upload spool) writes: TMPDIR, else /tmp.
    spool = env.get("TMPDIR", {}).get("value", "/tmp")
    if "NEOBATCH_SPOOL_DIR" in env:
        assert env["NEOBATCH_SPOOL_DIR"]["value"] == spool
    limit = int(
        env.get("NEOBATCH_MAX_UPLOAD_BYTES", {}).get("value") or ConsoleSettings().max_upload_bytes
    )
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[spool])
    empty_dir = volume["emptyDir"]
    assert empty_dir.get("medium", "") != "Memory", "uploads would count against the memory limit"
    assert quantity_bytes(empty_dir["sizeLimit"]) >= limit
    requests = spec["containers"][0]["resources"]["requests"]
    assert quantity_bytes(requests["ephemeral-storage"]) >= quantity_bytes(empty_dir["sizeLimit"])


# --- compose ---------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolations(value: str) -> list[str]:
    return re.findall(r"\$\{([A-Z0-9_]+)", value)


def test_compose_logins_come_from_the_environment_and_are_required() -> None:
    doc = compose()
    services = doc["services"]
    for name in SERVICES:
        env = services[name]["environment"]
        nats_url, mongo_url = env["NATS_URL"], env["MONGO_URL"]
        assert "NATS_PASSWORD" in interpolations(nats_url), name
        assert "MONGO_APP_PASSWORD" in interpolations(mongo_url), name
        assert nats_url.count("@") == 3  # every seed carries the login
    text = COMPOSE.read_text()
    for variable in (
        "NATS_PASSWORD",
        "NATS_INTEGRATION_PASSWORD",
        "MONGO_ROOT_PASSWORD",
        "MONGO_APP_PASSWORD",
    ):
        # Required (`:?`), never defaulted to a password written here.
        assert f"${{{variable}:?" in text, variable
        assert not re.search(rf"\${{{variable}:-", text), variable
    # Every `$` is an interpolation or compose's `$$` escape (JavaScript `${x}` would be eaten).
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        stripped = re.sub(r"\$\$|\$\{[A-Z0-9_]+(?::?[-?][^}]*)?\}", "", line)
        assert "$" not in stripped, line
    conf = doc["configs"]["nats_conf"]["content"]
    assert re.search(r"authorization\s*\{[^}]*\$\$NATS_PASSWORD", conf)
    for i in (1, 2, 3):
        assert "--config" in services[f"nats-{i}"]["command"]
        assert "--auth" in services[f"mongo-{i}"]["command"]
        assert "--keyFile" in services[f"mongo-{i}"]["command"]


def test_compose_publishes_only_the_console_and_keeps_nats_and_mongo_internal() -> None:
    doc = compose()
    assert doc["networks"]["data"]["internal"] is True
    for name, service in doc["services"].items():
        if name != "console":
            assert "ports" not in service, name
        if name.startswith(("nats-", "mongo-")) and name != "mongo-keyfile":
            assert service["networks"] == ["data"], name
    assert doc["services"]["console"]["ports"] == [
        "${NEOBATCH_CONSOLE_PUBLISH:-127.0.0.1:8080}:8080"
    ]
    assert doc["services"]["console"]["environment"]["NEOBATCH_METRICS_PORT"] == "9090"


# --- the NATS configs, run by a real nats-server -----------------------------------------


def nats_servers_as_shipped() -> dict[str, tuple[str, list[str]]]:
    """(nats.conf, nats-server arguments) of the k8s StatefulSet and of compose's nats-1."""
    k8s_args = pod_spec("nats")["containers"][0]["args"]
    k8s = (config_map("nats-config")["nats.conf"], k8s_args)
    service = compose()["services"]["nats-1"]
    # Compose writes `$$` for a literal `$` (its interpolation escape).
    conf = compose()["configs"]["nats_conf"]["content"].replace("$$", "$")
    return {"k8s": k8s, "compose": (conf, service["command"])}


@pytest.mark.parametrize("where", ["k8s", "compose"])
async def test_nats_config_refuses_a_client_without_the_login(where: str, tmp_path: Path) -> None:
    """The shipped config and arguments on loopback ports: without the login (or with a wrong
    one) the server refuses the client; the services' URL form, login inside, works."""
    client, monitor, cluster = free_port(), free_port(), free_port()
    conf, args = nats_servers_as_shipped()[where]
    conf = (
        conf.replace("0.0.0.0:4222", f"{LOOPBACK}:{client}")
        .replace("0.0.0.0:8222", f"{LOOPBACK}:{monitor}")
        .replace("0.0.0.0:6222", f"{LOOPBACK}:{cluster}")
        .replace("store_dir: /data", f"store_dir: {tmp_path / 'js'}")
    )
    (tmp_path / "nats.conf").write_text(conf)
    args = [str(tmp_path / "nats.conf") if arg == "/etc/nats/nats.conf" else arg for arg in args]
    # The peers' routes point at a loopback port nobody listens on (the server keeps trying).
    args = [re.sub(r"nats-\d:6222", f"{LOOPBACK}:{free_port()}", arg) for arg in args]
    password = "p0a1b2c3d4e5f6"
    env = {
        "POD_NAME": "nats-0",
        "NATS_USER": "neobatch",
        "NATS_PASSWORD": password,
        "NATS_INTEGRATION_PASSWORD": "p9integration",
    }
    server = ManagedProcess([str(nats_server_binary()), *args], tmp_path / "nats.log", env=env)
    with server:
        wait_port(LOOPBACK, client, 15, process=server)
        for url in (f"nats://{LOOPBACK}:{client}", f"nats://neobatch:wrong@{LOOPBACK}:{client}"):
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await nats.connect(url, allow_reconnect=False, connect_timeout=5)
        url = f"nats://neobatch:{password}@{LOOPBACK}:{client}"
        connection = await nats.connect(nats_servers(url), allow_reconnect=False)
        try:
            await connection.publish("neobatch.check", b"ok")
            await connection.flush(timeout=5)
            assert connection.is_connected
        finally:
            await connection.close()
