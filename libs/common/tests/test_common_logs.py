"""No secret reaches a log line (DESIGN rule 6)."""

from __future__ import annotations

import json
import logging

from neobatch.common.logs import JsonFormatter, log_fields, redact

PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n-----END OPENSSH PRIVATE KEY-----"


def format_record(message: str, **fields: object) -> dict[str, object]:
    record = logging.LogRecord("neobatch.test", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(log_fields(**fields))
    return json.loads(JsonFormatter().format(record))


def test_secret_fields_and_substrings_are_masked() -> None:
    line = format_record(
        "calling provider with Authorization: Bearer rpa_ABCDEF1234567890 and key " + PRIVATE_KEY,
        api_key="rpa_ABCDEF1234567890",
        nested={"ssh": {"private_key": PRIVATE_KEY}, "host": "10.0.0.1"},
        job_id="job_1",
    )
    text = json.dumps(line)
    assert "ABCDEF1234567890" not in text
    assert "b3BlbnNzaC1rZXktdjEAAAA" not in text
    assert line["job_id"] == "job_1"
    assert line["nested"] == {"ssh": {"private_key": "[redacted]"}, "host": "10.0.0.1"}


def test_redact_keeps_ordinary_values() -> None:
    assert redact({"status": "running", "count": 3, "items": ["a", "b"]}) == {
        "status": "running",
        "count": 3,
        "items": ["a", "b"],
    }
    assert redact("token=abc123 rest") == "token=[redacted] rest"


def test_credentials_in_connection_urls_are_masked() -> None:
    """NATS_URL and MONGO_URL carry the broker's and the database's passwords (deploy/)."""
    nats_url = (
        "nats://neobatch:n4tsPw-x1@nats-0.nats:4222,nats://neobatch:n4tsPw-x1@nats-1.nats:4222"
    )
    mongo_url = "mongodb://neobatch:m0ngo%2FPw@mongo-0.mongo:27017/?replicaSet=rs0&authSource=admin"
    line = format_record(
        f"could not connect to {nats_url} or {mongo_url}",
        nats_url=nats_url,
        servers=[mongo_url],
        error=f"ServerSelectionTimeoutError: {mongo_url}",
    )
    text = json.dumps(line)
    assert "n4tsPw-x1" not in text
    assert "m0ngo" not in text
    # What is left still says where it tried to connect.
    assert "nats-0.nats:4222" in line["message"]
    assert "mongo-0.mongo:27017" in line["message"]
    assert redact("mongodb://127.0.0.1:27017") == "mongodb://127.0.0.1:27017"
    assert redact("nats://tok3n@nats:4222") == "nats://[redacted]@nats:4222"


def test_connection_urls_are_secret_settings() -> None:
    from neobatch.common.settings import CommonSettings

    settings = CommonSettings(
        nats_url="nats://u:n4tsPw-x1@nats:4222", mongo_url="mongodb://u:m0ngoPw@mongo:27017"
    )
    assert "n4tsPw" not in repr(settings)
    assert "m0ngoPw" not in repr(settings)
