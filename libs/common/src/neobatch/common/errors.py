"""Errors that cross module boundaries. Each has a stable `code` users can match on."""

from __future__ import annotations


class NeobatchError(Exception):
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(NeobatchError):
    code = "not_found"


class Conflict(NeobatchError):
    code = "conflict"


class InvalidInput(NeobatchError):
    code = "invalid_request"


class ConfigError(NeobatchError):
    code = "config_error"
