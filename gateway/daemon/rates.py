"""Rates an operator plans with: messages in and out per second over the last ten seconds.

Counters are sampled by the housekeeping tick; rates are differences over a sliding window, so
a burst does not make the projection jump about, and nothing is computed per message.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_SECS = 10.0


@dataclass(frozen=True)
class Sample:
    at: float
    accepted: int
    accepted_bytes: int
    delivered: int


class Rates:
    def __init__(self, window_secs: float = WINDOW_SECS) -> None:
        self._window = window_secs
        self._samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)
        while len(self._samples) > 2 and sample.at - self._samples[0].at > self._window:
            self._samples.popleft()

    def per_second(self) -> dict[str, float]:
        """in/out messages and in bytes per second; zeros until two samples exist."""
        if len(self._samples) < 2:
            return {"in_msgs": 0.0, "in_bytes": 0.0, "out_msgs": 0.0}
        first, last = self._samples[0], self._samples[-1]
        span = max(last.at - first.at, 1e-6)
        return {
            "in_msgs": round((last.accepted - first.accepted) / span, 1),
            "in_bytes": round((last.accepted_bytes - first.accepted_bytes) / span, 1),
            "out_msgs": round((last.delivered - first.delivered) / span, 1),
        }


def projections(backlog: int, free_bytes: int, rates: dict[str, float]) -> dict[str, float | None]:
    """Seconds until the disk is full at the current net inflow, and until the backlog is
    drained at the current net outflow; None when that is not where things are heading."""
    net_out = rates["out_msgs"] - rates["in_msgs"]
    drain = backlog / net_out if backlog and net_out > 0 else None
    growth_bytes = rates["in_bytes"] * (1 - rates["out_msgs"] / rates["in_msgs"]) \
        if rates["in_msgs"] else 0.0
    full = free_bytes / growth_bytes if growth_bytes > 0 else None
    return {"drain_secs": round(drain, 1) if drain else None,
            "disk_full_secs": round(full) if full else None}
