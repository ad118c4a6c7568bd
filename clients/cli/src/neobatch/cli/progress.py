"""What `watch` shows of a running job: counts, rate, ETA and cost. Pure (time is passed in)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

TERMINAL = frozenset(
    {"completed", "failed", "expired", "cancelled", "resource_failed", "submit_failed"}
)
WINDOW_SECONDS = 30.0  # the rate is measured over the last half minute of polls


@dataclass(frozen=True)
class Figures:
    job_id: str
    status: str
    total: int
    completed: int
    failed: int
    rate: float | None  # finished requests per second, over the recent window
    eta_seconds: float | None
    cost_usd: float
    cost_final: bool

    @property
    def done(self) -> int:
        return self.completed + self.failed

    def line(self) -> str:
        """One plain line (logs, pipes)."""
        parts = [f"{self.job_id} {self.status}"]
        if self.total:
            parts.append(f"{self.done}/{self.total} done ({self.failed} failed)")
        if self.rate is not None:
            parts.append(f"{self.rate:.1f} req/s")
        if self.eta_seconds is not None:
            parts.append(f"ETA {format_seconds(self.eta_seconds)}")
        parts.append(f"${self.cost_usd:.4f}{'' if self.cost_final else ' so far'}")
        return "  ".join(parts)


class Tracker:
    """Feed it each polled job view; it keeps a short history to measure the rate."""

    def __init__(self, window_seconds: float = WINDOW_SECONDS) -> None:
        self._window = window_seconds
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, job: dict[str, Any], now: float) -> Figures:
        counts = job.get("request_counts") or {}
        total = int(counts.get("total") or 0)
        completed = int(counts.get("completed") or 0)
        failed = int(counts.get("failed") or 0)
        status = str(job.get("status") or "")
        done = completed + failed
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.popleft()
        rate = None
        first_time, first_done = self._samples[0]
        if status == "in_progress" and now > first_time and done > first_done:
            rate = (done - first_done) / (now - first_time)
        eta = (total - done) / rate if rate and total >= done else None
        bill = job.get("bill") or {}
        return Figures(
            job_id=str(job.get("id")),
            status=status,
            total=total,
            completed=completed,
            failed=failed,
            rate=rate,
            eta_seconds=eta,
            cost_usd=float(bill.get("total_usd") or 0.0),
            cost_final=bool(bill.get("final")),
        )


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
