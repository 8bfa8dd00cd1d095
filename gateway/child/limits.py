"""What one child may ask of the gateway per second: twin updates and routed messages.

A child that storms the gateway must slow itself, never the others and never the card: past its
rate it is not refused or disconnected (a device SDK would only retry harder) but its socket is
not read until the rate allows the next request, so the flood waits in its own TCP window. The
bucket lets a request through and books the debt: the child pays by waiting afterwards, which
keeps the arithmetic exact without holding a packet that was already read.
"""

from __future__ import annotations

from dataclasses import dataclass

TWIN = "twin updates"
ROUTED = "routed messages"
CONFIG_KEY = {TWIN: "limits.twin_updates_per_sec", ROUTED: "limits.routed_messages_per_sec"}


@dataclass
class _Bucket:
    rate: float  # tokens per second; 0 = no limit
    tokens: float
    at: float

    def charge(self, now: float) -> float:
        """Take one token; the seconds to wait before the next request may be read."""
        if not self.rate:
            return 0.0
        burst = max(self.rate, 1.0)  # one second's worth, like IoT Hub's traffic shaping
        self.tokens = min(burst, self.tokens + (now - self.at) * self.rate) - 1
        self.at = now
        return -self.tokens / self.rate if self.tokens < 0 else 0.0


class ChildRates:
    """The per-connection buckets, from `[limits]`."""

    def __init__(self, twin_per_sec: float, routed_per_sec: float, now: float) -> None:
        self._buckets = {
            TWIN: _Bucket(twin_per_sec, max(twin_per_sec, 1.0), now),
            ROUTED: _Bucket(routed_per_sec, max(routed_per_sec, 1.0), now),
        }

    def charge(self, kind: str, now: float) -> float:
        return self._buckets[kind].charge(now)

    def rate(self, kind: str) -> float:
        return self._buckets[kind].rate
