"""The completion window grammar both job APIs accept (AIBrix's). Pure."""

from __future__ import annotations

import re

# AIBrix grammar: optional <n>d, then <n>h, then <n>min or <n>m, in that order; total > 0.
_WINDOW = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)(?:min|m))?$")
WINDOW_HINT = "use days, hours and minutes in that order, e.g. 24h, 1d2h, 90min"
# Bounded so a deadline computed from it stays a sane datetime (a huge value would overflow).
MAX_WINDOW_SECONDS = 30 * 86400


def parse_completion_window(value: str) -> int:
    """`"1d2h"` → 93600 seconds; raises ValueError naming the field on anything else."""
    match = _WINDOW.match(value.strip())
    if match is None or not value.strip():
        raise ValueError(f"completion_window {value!r} is invalid: {WINDOW_HINT}")
    days, hours, minutes = (int(match.group(k) or 0) for k in ("d", "h", "m"))
    seconds = days * 86400 + hours * 3600 + minutes * 60
    if seconds <= 0:
        raise ValueError(f"completion_window {value!r} must be longer than zero")
    if seconds > MAX_WINDOW_SECONDS:
        raise ValueError(f"completion_window {value!r} must be at most 30d")
    return seconds
