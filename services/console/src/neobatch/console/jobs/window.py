"""The completion window grammar both job APIs accept (AIBrix's). Pure."""

from __future__ import annotations

import re

# AIBrix grammar: optional <n>d, then <n>h, then <n>min or <n>m, in that order; total > 0.
# Ours adds a trailing <n>s, for operators who allow windows under a minute (the shortest
# window a job may ask for is the console's NEOBATCH_MIN_COMPLETION_WINDOW_SECONDS).
_WINDOW = re.compile(r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)(?:min|m))?(?:(?P<s>\d+)s)?$")
WINDOW_HINT = "use days, hours, minutes and seconds in that order, e.g. 24h, 1d2h, 90min"
# Bounded so a deadline computed from it stays a sane datetime (a huge value would overflow).
MAX_WINDOW_SECONDS = 30 * 86400


def parse_completion_window(value: str) -> int:
    """`"1d2h"` → 93600 seconds; raises ValueError naming the field on anything else."""
    match = _WINDOW.match(value.strip())
    if match is None or not value.strip():
        raise ValueError(f"completion_window {value!r} is invalid: {WINDOW_HINT}")
    days, hours, minutes, secs = (int(match.group(k) or 0) for k in ("d", "h", "m", "s"))
    seconds = days * 86400 + hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(f"completion_window {value!r} must be longer than zero")
    if seconds > MAX_WINDOW_SECONDS:
        raise ValueError(f"completion_window {value!r} must be at most 30d")
    return seconds


def check_minimum_window(seconds: int, minimum_seconds: int, value: str) -> None:
    """Refuse a window shorter than the operator allows (a machine must have time to start)."""
    if seconds < minimum_seconds:
        raise ValueError(
            f"completion_window {value!r} is shorter than the minimum of {minimum_seconds}s"
        )
