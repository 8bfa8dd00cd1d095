"""cloud.max_publish_rate: publishes per second with a one-second burst, on times it is given.

The bucket reads no clock of its own: the drain passes the monotonic time in, so that a test can
walk it through seconds without sleeping.
"""

from __future__ import annotations


class TokenBucket:
    """Publishes per second with a one-second burst; rate 0 means no limit."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self._tokens = max(rate, 1.0)
        self._at = now

    def _refill(self, now: float) -> None:
        self._tokens = min(max(self.rate, 1.0), self._tokens + (now - self._at) * self.rate)
        self._at = now

    def available(self, now: float) -> int:
        self._refill(now)
        return int(self._tokens)

    def take(self, count: int = 1) -> None:
        if self.rate:
            self._tokens -= count

    def wait_for_one(self, now: float) -> float:
        """Seconds until one more publish is allowed (at least a millisecond: a timer's delay)."""
        self._refill(now)
        return max(0.001, (1 - self._tokens) / self.rate)
