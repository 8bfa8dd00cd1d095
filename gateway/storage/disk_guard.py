"""The disk guard: the backlog's quota and the filesystem's free space, and what to do when full.

RocksDB's out-of-space error is sticky (every later write fails, even closing does), so the
gateway must never get there: it enforces its own limits well before the filesystem is full,
checked once a second, with hysteresis so that it does not flap. Past the limit the configured
policy applies:

- drop-oldest (default): the oldest stored messages of the lowest priority are dropped, counted,
  a bounded number per tick, until the backlog is back under the limit;
- refuse-new: telemetry is refused (no PUBACK; the connection closes with the reason), so the
  children keep their data until the gateway has room again.

One journal line when the state changes, none per message.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import NamedTuple

from gateway.log import Event, event

RESUME_FRACTION = 0.9  # back to normal under 90% of the quota...
RESUME_FREE_MARGIN = 2.0  # ...and with two points more free space than the minimum
DROP_PER_TICK_FRACTION = 0.01  # drop at most 1% of the backlog per second (and at least 100)


class DiskUsage(NamedTuple):
    total: int
    free: int  # what an unprivileged writer can still use (df's "Avail")


def disk_usage(path: str | os.PathLike) -> DiskUsage:
    """The filesystem under `path`, from statvfs(2): psutil.disk_usage is this call, and
    psutil's import alone costs the daemon 1.2 MiB of RSS (issue 18)."""
    st = os.statvfs(path)
    return DiskUsage(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


@dataclass
class DiskState:
    full: bool = False
    reason: str = ""
    dropped: int = 0
    refused: int = 0
    free_percent: float = 100.0


class DiskGuard:
    def __init__(self, path, max_bytes: int, min_free_percent: float, policy: str) -> None:
        self._path = str(path)
        self.max_bytes = max_bytes
        self.min_free_percent = min_free_percent
        self.policy = policy
        self.state = DiskState()

    def check(self, backlog_bytes: int) -> DiskState:
        """Update the state from the backlog's bytes and the filesystem; log a change."""
        usage = disk_usage(self._path)
        free_percent = 100.0 * usage.free / usage.total if usage.total else 100.0
        self.state.free_percent = round(free_percent, 1)
        over_quota = self.max_bytes and backlog_bytes > self.max_bytes
        low_free = free_percent < self.min_free_percent
        if not self.state.full and (over_quota or low_free):
            reason = (f"backlog of {backlog_bytes} bytes is over storage.max_bytes "
                      f"({self.max_bytes})" if over_quota else
                      f"{free_percent:.1f}% free under the storage path, under "
                      f"storage.min_free_percent ({self.min_free_percent:g}%)")
            self._change(True, reason)
        elif self.state.full and not over_quota and not low_free:
            quota_ok = not self.max_bytes or backlog_bytes < self.max_bytes * RESUME_FRACTION
            free_ok = free_percent >= self.min_free_percent + RESUME_FREE_MARGIN \
                or self.min_free_percent == 0
            if quota_ok and free_ok:
                self._change(False, "")
        return self.state

    def refuses(self) -> bool:
        return self.state.full and self.policy == "refuse-new"

    def drops(self) -> bool:
        return self.state.full and self.policy == "drop-oldest"

    def drop_budget(self, backlog_messages: int) -> int:
        return max(100, int(backlog_messages * DROP_PER_TICK_FRACTION))

    def _change(self, full: bool, reason: str) -> None:
        self.state.full, self.state.reason = full, reason
        if full:
            action = ("the oldest lowest-priority messages are dropped (counted)"
                      if self.policy == "drop-oldest" else
                      "new telemetry is refused (children keep it) until there is room")
            event(Event.DISK_FULL, f"storage full: {reason}; {action}; free space under the "
                                   f"storage path or raise the limit", level=logging.ERROR)
        else:
            event(Event.DISK_FULL, f"storage has room again ({self.state.free_percent:.1f}% free);"
                                   f" normal service resumed ({self.state.dropped} dropped, "
                                   f"{self.state.refused} refused while full)")
