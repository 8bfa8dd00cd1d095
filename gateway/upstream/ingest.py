"""From an accepted child publish to a safe outbox message: stamping, group commit, PUBACK release.

The group commit runs on a single worker thread so that an fsync (milliseconds on an SD card)
never stalls the event loop, and commits never overlap. A commit starts when the oldest
uncommitted message has waited `commit_interval`, or sooner when `commit_max` are waiting, but
never sooner than `commit_interval` after the previous one started: fsyncs per second are capped
by time (10/s at the default 100 ms) whatever the message rate. At a high rate one commit simply
takes more messages, which also writes fewer partially filled pages and journal blocks.

While the cloud is connected, a commit takes only the messages that have waited the whole
interval: every message gives the cloud's PUBACK `commit_interval` to win the race, so a healthy
uplink writes almost nothing. While it is not, there is no race to wait for and everything
pending is written at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gateway.log import Event, event
from gateway.storage import ballast
from gateway.upstream.message import DEFAULT_PRIORITY, Message
from gateway.upstream.outbox import Outbox

STORE_RETRY_SECS = 1.0


class Ingest:
    """Accepts telemetry, keeps the commit cadence, and tells each sender when it is safe."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        ttl_secs: int,
        commit_interval_ms: int,
        commit_max: int,
        on_new: Callable[[], None] = lambda: None,
        cloud_online: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
        on_disk_full: Callable[[str], None] = lambda reason: None,
        after_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.outbox = outbox
        self.ttl_secs = ttl_secs
        self._interval = commit_interval_ms / 1000
        self._max = commit_max
        self._on_new = on_new
        self._cloud_online = cloud_online
        self._clock = clock
        self._waiters: dict[int, Callable[[], None]] = {}
        self._pending = asyncio.Event()
        self._full = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self.store_error = ""
        self.accepted = 0
        self.accepted_bytes = 0
        self._on_disk_full = on_disk_full  # the daemon restarts to reopen the store
        self._after_commit = after_commit  # the disk guard: a fast ingest fills a disk quickly
        self._stopping = False
        self._last_commit = 0.0  # monotonic start of the previous commit
        self._task: asyncio.Task | None = None
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
        self._pending.set()
        if self.outbox.uncommitted() >= self._max:
            self._full.set()
        self._on_new()
        return seq

    def set_cadence(self, commit_interval_ms: int, commit_max: int) -> None:
        """A reload may change the commit cadence; the next commit uses it."""
        self._interval = commit_interval_ms / 1000
        self._max = commit_max

    def _released(self, seqs: list[int]) -> None:
        for seq in seqs:
            callback = self._waiters.pop(seq, None)
            if callback is not None:
                callback()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await self._pending.wait()
            oldest = self.outbox.oldest_uncommitted_ms()
            if oldest is None:
                self._pending.clear()
                continue
            wait = oldest / 1000 + self._interval - self._clock()
            if wait > 0 and not self._full.is_set() and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), wait)
            spacing = self._last_commit + self._interval - time.monotonic()
            if spacing > 0 and not self._stopping:
                await asyncio.sleep(spacing)
            self._last_commit = time.monotonic()
            everything = self._full.is_set() or self._stopping or not self._cloud_online()
            self._full.clear()
            cutoff = None if everything else int((self._clock() - self._interval) * 1000)
            await self._commit(loop, cutoff)
            if not self.outbox.uncommitted():
                self._pending.clear()

    async def _commit(self, loop: asyncio.AbstractEventLoop, cutoff_ms: int | None) -> None:
        commit = self.outbox.commit_begin(cutoff_ms)
        if commit is None:
            return
        try:
            await loop.run_in_executor(self._executor, self.outbox.write, commit)
        except Exception as exc:  # RocksDB raises plain Exception (ENOSPC, EIO...)
            self.outbox.commit_failed(commit)
            self._store_failed(str(exc))
            if ballast.is_disk_full(str(exc)):
                self._on_disk_full(str(exc))
                return
            await asyncio.sleep(STORE_RETRY_SECS)
            return
        self.outbox.commit_end(commit)
        self._after_commit()
        if self.store_error:
            self.store_error = ""
            event(Event.STORE_ERROR, "store: writes succeed again")

    def _store_failed(self, reason: str) -> None:
        if reason != self.store_error:
            event(
                Event.STORE_ERROR,
                f"store: group commit failed: {reason}; unsafe messages are held in memory "
                f"without PUBACK and retried; free disk space under the storage path",
                level=logging.ERROR,
            )
        self.store_error = reason

    async def aclose(self) -> None:
        """Finish the commit under way, then commit the rest: everything accepted is on disk."""
        self._stopping = True
        self._pending.set()
        self._full.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)
        if self.store_error and ballast.is_disk_full(self.store_error):
            return  # RocksDB refuses every write now; what was PUBACKed is already in its log
        self.outbox.close()
