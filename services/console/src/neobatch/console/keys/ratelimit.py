"""A token bucket per API key for every API request (429 past the limit). Pure: time is passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

# Buckets of keys idle this long are dropped, so the table stays as small as the active keys.
_IDLE_SECONDS = 600.0


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimiter:
    """`per_minute` requests a minute per key, with bursts up to `per_minute`; 0 = unlimited."""

    per_minute: int
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allow(self, key: str, now: float) -> float:
        """0.0 when the call may proceed, else the seconds until one would be allowed."""
        if self.per_minute <= 0:
            return 0.0
        rate = self.per_minute / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            self._forget_idle(now)
            bucket = self._buckets[key] = _Bucket(tokens=float(self.per_minute), at=now)
        bucket.tokens = min(float(self.per_minute), bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def _forget_idle(self, now: float) -> None:
        idle = [key for key, b in self._buckets.items() if now - b.at > _IDLE_SECONDS]
        for key in idle:
            del self._buckets[key]
