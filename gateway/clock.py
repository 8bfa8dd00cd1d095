"""The clock for time-to-live and token expiry: wall time read once, then advanced by the
monotonic clock.

A Raspberry Pi has no real-time clock: it boots with the time it saved at shutdown (or 1970) and
NTP jumps it forward later, by hours or days; a wrong NTP answer or an operator can jump it back.
Measured against the wall clock, a jump forward would expire the whole backlog at once and a jump
back would keep messages, and accept expired SAS tokens, for as long as the jump. Measured
against this clock, ages grow at the real rate whatever the wall clock does while the daemon
runs; a jump is taken in at the next start.
"""

from __future__ import annotations

import time


class SteadyClock:
    """Seconds since the epoch, anchored to the wall clock at start and to monotonic after."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def __call__(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0)

    def wall_offset(self) -> float:
        """How far the wall clock has moved from this one since start (the jumps, in seconds)."""
        return time.time() - self()
