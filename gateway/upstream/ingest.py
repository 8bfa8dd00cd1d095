"""From an accepted child publish to a safe outbox message: stamping and PUBACK release.

A message is appended to the outbox in memory; the one writer (storage/writer.py) decides when
the group commit writes it, and the outbox tells here which messages became safe (written by
a commit, or acknowledged by the cloud first), so that each sender's PUBACK can be released.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.storage.writer import Writer
from gateway.upstream.message import DEFAULT_PRIORITY, Message
from gateway.upstream.outbox import Outbox


class Ingest:
    """Accepts telemetry and tells each sender when it is safe."""

    def __init__(
        self,
        outbox: Outbox,
        writer: Writer,
        *,
        ttl_secs: int,
        on_new: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.ttl_secs = ttl_secs
        self._writer = writer
        self._on_new = on_new
        self._clock = clock
        self._waiters: dict[int, Callable[[], None]] = {}
        self.accepted = 0
        self.accepted_bytes = 0
        outbox.on_safe = self._released

    def accept(
        self,
        device_id: str,
        properties: str,
        payload: bytes,
        on_safe: Callable[[], None] | None,
        priority: int = DEFAULT_PRIORITY,
        ttl_secs: int | None = None,
    ) -> int:
        """Queue one message; `on_safe` runs once the cloud or the disk holds it."""
        now_ms = int(self._clock() * 1000)
        ttl_ms = (ttl_secs or self.ttl_secs) * 1000
        msg = Message(device_id, now_ms, now_ms + ttl_ms, properties, payload, priority)
        seq = self.outbox.append(msg)
        self.accepted += 1
        self.accepted_bytes += msg.size()
        if on_safe is not None:
            self._waiters[seq] = on_safe
        self._writer.messages_added()
        self._on_new()
        return seq

    def _released(self, seqs: list[int]) -> None:
        for seq in seqs:
            callback = self._waiters.pop(seq, None)
            if callback is not None:
                callback()
