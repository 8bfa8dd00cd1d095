"""One deadline for every test that waits on a condition it can only poll.

A test that waits for the daemon (its status, its journal, a CONNACK code) polls, because the
daemon offers no event to block on; what it must not do is sleep a fixed time and hope. The
helper keeps the last value it saw so that a timeout says what was there instead of the
condition, which is what one needs to read a failure off a CI log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(probe: Callable[[], T], predicate: Callable[[T], object] = bool, *,
               timeout: float = 30.0, what: str = "condition", interval: float = 0.05,
               show: Callable[[T], object] = repr) -> T:
    """Call `probe()` until `predicate(value)` holds and return that value.

    Raises AssertionError naming `what` and the last value probed (through `show`, e.g. to
    keep only the tail of a journal) when `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if predicate(last):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; "
                                 f"last: {show(last)}")
        time.sleep(interval)
