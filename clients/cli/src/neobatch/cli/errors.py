"""The CLI's errors and exit codes (documented in the README and `neobatch --help`).

| code | meaning |
|---|---|
| 0 | done; for `submit --watch` and `watch`, the job completed |
| 1 | unexpected error (a bug: please report it) |
| 2 | usage: a bad option or argument, no API key, an unreadable profile |
| 3 | the input file failed local validation (nothing was uploaded) |
| 4 | the console refused the request (4xx): its `code` and `message` are shown |
| 5 | the console is unreachable or failed (5xx, timeout) |
| 6 | the job ended, but not `completed` (failed, expired, cancelled, ...) |
| 7 | `--timeout` passed while the job still ran (it keeps running) |
| 130 | interrupted (Ctrl-C); a job already created keeps running |
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    INVALID_INPUT = 3
    REFUSED = 4
    UNAVAILABLE = 5
    JOB_NOT_COMPLETED = 6
    TIMEOUT = 7
    INTERRUPTED = 130


class CliError(Exception):
    """An error the CLI reports as `error: <code>: <message>` (or JSON with --json)."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        exit_code: ExitCode = ExitCode.USAGE,
        status: int | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.exit_code = exit_code
        self.status = status
        self.details = details or []

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.status is not None:
            body["status"] = self.status
        if self.details:
            body["errors"] = self.details
        return {"error": body}
