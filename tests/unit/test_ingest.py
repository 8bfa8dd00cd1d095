"""Ingest and the writer on a real store: stamping, the group-commit cadence, and when a child's
PUBACK is let go.

Each test drives the real group-commit task with asyncio and waits for the events it reports
(a sender told its message is safe, a commit finished); the only time bound is a hang guard.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from gateway.storage.store import Store
from gateway.storage.writer import Writer
from gateway.upstream.ingest import Ingest
from gateway.upstream.outbox import Outbox

NOW = 4_000_000_000.0  # seconds, far ahead: nothing expires while a test runs
HANG = 30.0  # a guard against a hang, never a measure of speed
LONG_MS = 3_600_000  # a commit interval no test lives to see pass


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), HANG))


class Harness:
    """An Ingest and its writer on their own store, with the callbacks the daemon would pass
    in; `ingest` keeps the commit's calls (start, set_cadence) as the daemon makes them."""

    def __init__(self, path, *, interval_ms: int, commit_max: int = 1000, online: bool = False,
                 clock: Callable[[], float] = lambda: NOW) -> None:
        self.path = path
        self.store = Store(path)
        self.outbox = Outbox(self.store)
        self.online = online
        self.news = 0
        self.commits: list[float] = []  # monotonic time at the end of each commit
        self.committed = asyncio.Event()
        self.writer = Writer(self.store, self.outbox, commit_interval_ms=interval_ms,
                             commit_max=commit_max, cloud_online=lambda: self.online,
                             clock=clock)
        self.writer.after_commit = self._commit_done
        self.ingest = Ingest(self.outbox, self.writer, ttl_secs=600, on_new=self._new,
                             clock=clock)
        self.ingest.start = self.writer.start  # type: ignore[method-assign]
        self.ingest.set_cadence = self.writer.set_cadence  # type: ignore[attr-defined]

    def _new(self) -> None:
        self.news += 1

    def _commit_done(self) -> None:
        self.commits.append(time.monotonic())
        self.committed.set()

    def accept(self, i: int) -> tuple[int, asyncio.Event]:
        safe = asyncio.Event()
        seq = self.ingest.accept("s1", f"i={i}", f"payload {i}".encode(), safe.set)
        return seq, safe

    async def close(self) -> None:
        await self.writer.aclose()
        self.store.close()

    def stored(self) -> list[bytes]:
        """The payloads on disk, read back through a fresh store as a restart would."""
        store = Store(self.path)
        try:
            outbox = Outbox(store)
            return [m.payload for _, m in outbox.read(0, 10_000, int(NOW * 1000))]
        finally:
            store.close()


def test_accept_stamps_the_message_and_counts_it(tmp_path):
    async def test() -> None:
        h = Harness(tmp_path / "store", interval_ms=LONG_MS)
        seq, _ = h.accept(1)
        (got_seq, msg), = h.outbox.read(0, 10, int(NOW * 1000))
        assert got_seq == seq
        assert (msg.device_id, msg.properties, msg.payload) == ("s1", "i=1", b"payload 1")
        assert msg.enqueued_ms == int(NOW * 1000)
        assert msg.expires_ms == msg.enqueued_ms + 600_000
        assert (h.ingest.accepted, h.ingest.accepted_bytes, h.news) == (1, msg.size(), 1)
        short = h.ingest.accept("s1", "", b"x", None, ttl_secs=5)
        assert h.outbox.get(short, msg.priority).expires_ms == int(NOW * 1000) + 5_000
        await h.close()

    run(test)


def test_the_puback_waits_for_the_commit_and_the_message_is_on_disk(tmp_path):
    async def test() -> None:
        h = Harness(tmp_path / "store", interval_ms=20)
        h.ingest.start()
        _, safe = h.accept(1)
        assert not safe.is_set(), "not safe before anything was written"
        await safe.wait()
        assert h.commits, "released by a commit"
        await h.close()
        assert h.stored() == [b"payload 1"]

    run(test)


def test_the_cloud_s_ack_releases_the_puback_without_a_commit(tmp_path):
    async def test() -> None:
        h = Harness(tmp_path / "store", interval_ms=LONG_MS, online=True)
        h.ingest.start()
        seq, safe = h.accept(1)
        _, other = h.accept(2)
        (_, msg), _ = h.outbox.read(0, 10, int(NOW * 1000))
        h.outbox.ack(seq, msg.size())  # the cloud's PUBACK arrived first
        assert safe.is_set() and not other.is_set()
        assert not h.commits and h.outbox.stats.committed_batches == 0
        await h.close()
        assert other.is_set(), "aclose made the other one safe"
        assert h.stored() == [b"payload 2"], "the acknowledged one was never written"

    run(test)


def test_commits_start_at_most_once_per_interval(tmp_path):
    """commit_max 1 asks for a commit at every message; the interval still spaces them."""
    interval = 0.05

    async def test() -> None:
        h = Harness(tmp_path / "store", interval_ms=int(interval * 1000), commit_max=1)
        h.ingest.start()
        started = time.monotonic()
        for i in range(4):
            _, safe = h.accept(i)
            await safe.wait()
        await h.close()
        # commit k (from 0) cannot start before k intervals after the first, which itself
        # started after `started`; each ends after it starts (1 ms: the loop's clock resolution)
        assert len(h.commits) >= 4
        for k, ended in enumerate(h.commits):
            assert ended - started >= k * interval - 0.001, (k, ended - started)

    run(test)


def test_a_burst_is_one_commit(tmp_path):
    """Everything accepted before a commit starts goes in that one commit."""

    async def test() -> None:
        h = Harness(tmp_path / "store", interval_ms=20)
        h.ingest.start()
        events = [h.accept(i)[1] for i in range(50)]
        await h.committed.wait()
        assert all(e.is_set() for e in events)
        assert h.outbox.stats.committed_batches == 1
        assert h.outbox.stats.committed_messages == 50
        await h.close()

    run(test)


def test_online_a_commit_takes_only_messages_that_waited_the_interval(tmp_path):
    """While the cloud is connected, younger messages are left to race the cloud's PUBACK."""
    clock = [NOW]

    async def test() -> None:
        h = Harness(tmp_path / "store", interval_ms=1000, online=True, clock=lambda: clock[0])
        h.ingest.start()
        _, old = h.accept(1)
        clock[0] += 5.0  # the first message has waited the interval, the next has not
        _, young = h.accept(2)
        await h.committed.wait()
        assert old.is_set() and not young.is_set()
        assert h.outbox.stats.committed_messages == 1
        h.online = False
        await h.close()
        assert young.is_set()
        assert h.stored() == [b"payload 1", b"payload 2"]

    run(test)


def test_aclose_commits_everything_accepted(tmp_path):
    async def test() -> None:
        h = Harness(tmp_path / "store", interval_ms=LONG_MS, online=True)
        h.ingest.start()
        events = [h.accept(i)[1] for i in range(10)]
        assert not any(e.is_set() for e in events)
        await h.close()
        assert all(e.is_set() for e in events)
        assert h.stored() == [f"payload {i}".encode() for i in range(10)]

    run(test)


def test_aclose_without_start_still_commits(tmp_path):
    async def test() -> None:
        h = Harness(tmp_path / "store", interval_ms=LONG_MS)
        _, safe = h.accept(1)
        await h.close()
        assert safe.is_set()
        assert h.stored() == [b"payload 1"]

    run(test)


def test_set_cadence_applies_to_the_next_commit(tmp_path):
    async def test() -> None:
        h = Harness(tmp_path / "store", interval_ms=LONG_MS, commit_max=1000)
        h.ingest.start()
        h.ingest.set_cadence(20, 1000)
        _, safe = h.accept(1)  # would wait an hour under the old cadence
        await safe.wait()
        await h.close()

    run(test)
