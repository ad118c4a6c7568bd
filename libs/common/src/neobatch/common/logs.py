"""Structured JSON logging with secrets redacted (DESIGN rule 6).

Redaction happens in the formatter, so no call site can forget it: values under keys that
name a secret are replaced, and secret-looking substrings (API keys, bearer tokens,
private key blocks) are masked inside any message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

REDACTED = "[redacted]"

_SECRET_KEY = re.compile(
    r"(api[_-]?key|token|secret|password|passphrase|authorization|private)", re.I
)
# Each pattern may capture a `keep` prefix (e.g. "Bearer ") that stays readable.
_SECRET_TEXT = [
    re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
    ),
    re.compile(r"(?i)(?P<keep>bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"\b(?:rp|rpa|sk|nb|secret)_[A-Za-z0-9_-]{8,}"),
    re.compile(
        r"(?i)(?P<keep>(?:api[_-]?key|token|password|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
    ),
    # Credentials in a connection URL (NATS_URL, MONGO_URL): the password of `user:pass@`,
    # then a lone token (`nats://token@host`); the host stays readable.
    re.compile(r"(?i)(?P<keep>\b[a-z][a-z0-9+.-]*://[^\s/@:,'\"]*:)[^\s/@,'\"]+(?=@)"),
    re.compile(r"(?i)(?P<keep>\b[a-z][a-z0-9+.-]*://)[^\s/@:,'\"]+(?=@)"),
]


def _mask(match: re.Match[str]) -> str:
    return (match.groupdict().get("keep") or "") + REDACTED


def redact_text(text: str) -> str:
    for pattern in _SECRET_TEXT:
        text = pattern.sub(_mask, text)
    return text


def redact(value: Any, key: str = "") -> Any:
    """Return a copy of `value` safe to log, emit or return to a user."""
    if key and _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(redact(fields))
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("neobatch").info("logging configured", extra={"fields": {"service": service}})


def log_fields(**fields: Any) -> dict[str, Any]:
    """`log.info("msg", extra=log_fields(job_id=...))`: structured fields for one line."""
    return {"fields": fields}
