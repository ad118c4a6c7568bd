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
