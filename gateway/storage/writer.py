"""The one writer: every synced write of the gateway, group-committed on one worker thread.

An fsync costs milliseconds on an SD card (20 ms and more on a tired one), so the event loop
never waits for one: everything that must be on disk before the gateway answers (a telemetry
PUBACK, a 204 to a reported patch, the broker's PUBACK for a cloud-to-device message or a
document) is handed to this writer, and the answer is given in the callback that runs once the
commit holding it is synced.

A commit is ONE synced RocksDB write, whatever it carries: the outbox's messages that are due
and every job submitted since the last commit. So a storm of twin patches costs one fsync per
commit, not one per patch. Commits start at most once per `commit_interval_ms` (fsyncs per
second are capped by configuration); within that spacing:

* telemetry waits for its aging as before: a commit starts when the oldest message has waited
  the interval, or sooner when `commit_max` wait; while the cloud is connected only messages
  that waited the whole interval are written, so the cloud's PUBACK usually wins and nothing is
  written at all;
* a job does not wait for aging: the next commit that the spacing allows takes it, so a 204
  waits at most one interval plus one flush.

Callbacks run on the event loop in submission order after the write returned. A failed write
(ENOSPC, EIO) keeps everything it carried: the outbox's messages stay in memory, the jobs stay
at the head of the queue, and both are retried; a full disk is reported once to the daemon,
which restarts to reopen the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from gateway.log import Event, event
from gateway.storage import ballast
from gateway.storage.store import Batch, Store
from gateway.storage.writes import Writes

STORE_RETRY_SECS = 1.0
_log = logging.getLogger(__name__)


class Commit(Protocol):
    batch: Batch


class Queue(Protocol):
    """What the writer asks of the outbox (upstream/outbox.py), which it may not import: its
    group commit's batch, and when its messages are due."""

    submit: object

    def uncommitted(self) -> int: ...
    def oldest_uncommitted_ms(self) -> int | None: ...
    def commit_begin(self, enqueued_until_ms: int | None = None) -> Commit | None: ...
    def commit_end(self, commit: Commit) -> object: ...
    def commit_failed(self, commit: Commit) -> None: ...


@dataclass
class _Job:
    writes: Writes
    on_durable: Callable[[], None] | None


class Writer:
    """Owns the worker thread and the commit cadence; takes the outbox's commit and jobs."""

    def __init__(
        self,
        store: Store,
        outbox: Queue,
        *,
        commit_interval_ms: int,
        commit_max: int,
        cloud_online: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._interval = commit_interval_ms / 1000
        self._max = commit_max
        self._cloud_online = cloud_online
        self._clock = clock
        self._jobs: list[_Job] = []
        self._pending = asyncio.Event()  # something waits: outbox messages or jobs
        self._hurry = asyncio.Event()  # commit as soon as the spacing allows
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._stopping = False
        self._closed = False
        self._last_commit = -1e9  # monotonic start of the previous commit
        self._task: asyncio.Task | None = None
        self.store_error = ""
        self.commits = 0  # synced writes made, one per commit
        self.jobs_committed = 0
        self.on_disk_full: Callable[[str], None] = lambda reason: None
        self.after_commit: Callable[[], None] = lambda: None
        outbox.submit = self.submit

    # -- what the rest of the gateway calls ---------------------------------------------------

    def submit(self, writes: Writes, on_durable: Callable[[], None] | None = None) -> None:
        """Make `writes` durable in the next commit, then call `on_durable` on the loop.

        Callers keep their own state in memory (or a write-through cache): what is submitted
        is what the store holds once the commit is done, and reads before then must not go to
        the store for it. The queue is bounded by its callers: each child connection stops
        reading past its own bound of outstanding work, and the cloud side by its Receive
        Maximum."""
        if self._closed:
            raise RuntimeError("the writer is closed; nothing can be made durable any more")
        self._jobs.append(_Job(writes, on_durable))
        self._pending.set()
        self._hurry.set()

    def messages_added(self) -> None:
        """The outbox holds new messages: commit when they are due (or enough wait)."""
        self._pending.set()
        if self._outbox.uncommitted() >= self._max:
            self._hurry.set()

    def set_cadence(self, commit_interval_ms: int, commit_max: int) -> None:
        """A reload may change the commit cadence; the next commit uses it."""
        self._interval = commit_interval_ms / 1000
        self._max = commit_max

    @property
    def backlog(self) -> int:
        """Jobs waiting for a commit (the operator's view of the queue)."""
        return len(self._jobs)

    async def call(self, blocking: Callable[[], object]) -> object:
        """Run store maintenance that may sync (a memtable flush, compaction) on the writer's
        thread, between two commits, so that it never blocks the loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, blocking)

    # -- the commit loop ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._pending.wait()
            if not self._jobs and self._outbox.oldest_uncommitted_ms() is None:
                self._pending.clear()
                if self._stopping:
                    return
                continue
            await self._until_due()
            spacing = self._last_commit + self._interval - time.monotonic()
            if spacing > 0 and not self._stopping:
                await asyncio.sleep(spacing)
            self._last_commit = time.monotonic()
            everything = (self._stopping or not self._cloud_online()
                          or self._outbox.uncommitted() >= self._max)
            self._hurry.clear()
            cutoff = None if everything else int((self._clock() - self._interval) * 1000)
            await self._commit(loop, cutoff)
            if self._stopping and self.store_error:
                return  # shutting down with a store that fails: what was answered is on disk

    async def _until_due(self) -> None:
        """Wait until the oldest message has aged one interval, unless a job or a full batch
        asks for a commit now. Online that is its race with the cloud's PUBACK; offline it keeps
        a trickle of telemetry at one commit per burst of children's windows (measured at
        100 msg/s offline: 5.7 flushes/s with the aging, 9.9 without)."""
        if self._jobs or self._hurry.is_set() or self._stopping:
            return
        oldest = self._outbox.oldest_uncommitted_ms()
        if oldest is None:
            return
        wait = oldest / 1000 + self._interval - self._clock()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), wait)

    async def _commit(self, loop: asyncio.AbstractEventLoop, cutoff_ms: int | None) -> None:
        commit = self._outbox.commit_begin(cutoff_ms)
        jobs, self._jobs = self._jobs, []
        if commit is None and not jobs:
            return
        batch = commit.batch if commit is not None else Batch()
        for job in jobs:
            job.writes.apply(batch)
        try:
            await loop.run_in_executor(self._executor, self._write, batch)
        except Exception as exc:  # RocksDB raises plain Exception (ENOSPC, EIO...)
            await self._failed(commit, jobs, str(exc))
            return
        self.commits += 1
        self.jobs_committed += len(jobs)
        if commit is not None:
            self._outbox.commit_end(commit)
        for job in jobs:
            if job.on_durable is not None:
                _call(job.on_durable)
        self.after_commit()
        if self.store_error:
            self.store_error = ""
            event(Event.STORE_ERROR, "store: writes succeed again")

    def _write(self, batch: Batch) -> None:
        self._store.write_durable(batch)

    async def _failed(self, commit: Commit | None, jobs: list[_Job], reason: str) -> None:
        """Keep everything the failed write carried, in order, for the next attempt."""
        if commit is not None:
            self._outbox.commit_failed(commit)
        self._jobs[:0] = jobs
        if reason != self.store_error:
            event(
                Event.STORE_ERROR,
                f"store: group commit failed: {reason}; unsafe messages and answers are held "
                f"in memory and retried; free disk space under the storage path",
                level=logging.ERROR,
            )
        self.store_error = reason
        if ballast.is_disk_full(reason):
            self.on_disk_full(reason)
            return
        if not self._stopping:
            await asyncio.sleep(STORE_RETRY_SECS)

    async def aclose(self) -> None:
        """Finish the commit under way, then commit the rest: everything accepted is on disk.

        If the last commit fails (after a full disk RocksDB refuses every write) the loop stops
        trying: what was answered is already in the log, and the rest was never answered."""
        self._stopping = True
        self._pending.set()
        self._hurry.set()
        if self._task is None:  # never started (tools, tests): still commit what is pending
            self._task = asyncio.get_running_loop().create_task(self._run(), name="last-commit")
        await self._task
        self._task = None
        self._executor.shutdown(wait=True)
        self._closed = True


def _call(callback: Callable[[], None]) -> None:
    """One answer's failure (a bug) must not keep the others from their callbacks."""
    try:
        callback()
    except Exception:
        _log.exception("writer: a callback after a commit failed")
