"""The uplink in force: the one place where the daemon binds an object after construction.

The uplink cannot be a constructor argument of the objects that use it: it is created only once
everything it calls back into exists (its cloud messages go to the cloud inbox, which needs the
ingest, which needs to wake the uplink), it does not exist at all when no cloud is configured,
and a reload replaces it with a new one. So everybody is given this slot at construction and
asks it for the uplink at the moment of use; `Gateway` alone fills and empties it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from gateway.upstream.uplink import Uplink, UplinkStats


class UplinkSlot:
    """Holds the running uplink and its task, or nothing (no cloud, or between two uplinks)."""

    def __init__(self) -> None:
        self.current: Uplink | None = None
        self.prefix = ""  # the cloud topic prefix of the uplink in force
        self._task: asyncio.Task | None = None

    def get(self) -> Uplink | None:
        return self.current

    def online(self) -> bool:
        return self.current is not None and self.current.stats.state == "online"

    def stats(self) -> UplinkStats | None:
        return self.current.stats if self.current is not None else None

    def state(self) -> str:
        return self.current.stats.state if self.current is not None else "disabled"

    def wake(self) -> None:
        if self.current is not None:
            self.current.wake()

    def set_subscriptions(self, topics: set[str]) -> None:
        if self.current is not None:
            self.current.set_subscriptions(topics)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                on_done: Callable[[bool], None] | None = None) -> bool:
        """False when there is no uplink (the caller keeps what it wanted to send)."""
        if self.current is None:
            return False
        return self.current.publish(topic, payload, retain=retain, on_done=on_done)

    def attach(self, uplink: Uplink, prefix: str) -> None:
        """Put a new uplink in force and run it (start-up, or a reload after `detach`)."""
        self.current, self.prefix = uplink, prefix
        self._task = asyncio.create_task(uplink.run(), name="uplink")

    async def detach(self) -> None:
        """Stop the uplink in force, if any, and leave the slot empty."""
        if self.current is not None:
            await self.current.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.current, self._task = None, None
