"""Token bucket: a rate with a burst, for what participants and sockets may send.

A bucket holds up to `burst` tokens and gains `rate` tokens per second; an action costing `n`
tokens goes through when the bucket has them. Pure logic on a monotonic clock: no I/O, no
tasks, O(1) per call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """`rate` tokens per second, at most `burst` at once (both positive)."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not self.rate > 0 or not self.burst >= 1:
            raise ValueError("a rate must be positive and its burst at least 1")


class TokenBucket:
    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, limit: Rate, *, now: float | None = None) -> None:
        self.rate = limit.rate
        self.burst = limit.burst
        self._tokens = limit.burst
        self._at = time.monotonic() if now is None else now

    def take(self, n: float = 1.0, *, now: float | None = None) -> bool:
        """Spend `n` tokens if the bucket has them; False (nothing spent) otherwise."""
        now = time.monotonic() if now is None else now
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True

    @property
    def tokens(self) -> float:
        return self._tokens
