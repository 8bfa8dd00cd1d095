"""The one writer on a real store: one synced write per commit, callbacks in order, failures held.

Every count of synced writes is the store's own counter (`Store.synced_writes`), and every test
runs the writer on its real worker thread under a real event loop; nothing waits on a timer
except the writer's own cadence.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.storage import keyspace as ks
from gateway.storage import writer as writer_module
from gateway.storage.store import Store, SyncForbidden
from gateway.storage.writer import Writer
from gateway.storage.writes import Writes
from gateway.upstream import outbox as outbox_module
from gateway.upstream.dead_letters import DeadLetters
from gateway.upstream.message import Message
from gateway.upstream.outbox import Outbox

NOW_MS = 1_700_000_000_000


def message(i: int) -> Message:
    return Message("s1", NOW_MS + i, NOW_MS + 3_600_000, f"i={i}", b"x" * 100)


class FailingStore(Store):
    """A real store whose next `fail` durable writes raise the way RocksDB reports an error."""

    fail = 0
    reason = "IO error: No space left on device: While appending to file: 000004.log"

    def write_durable(self, batch) -> None:
        if self.fail:
            self.fail -= 1
            raise Exception(self.reason)  # noqa: TRY002 (RocksDB raises plain Exception)
        super().write_durable(batch)


def make(path, *, online: bool = False, interval_ms: int = 20, store_cls=Store):
    store = store_cls(path)
    outbox = Outbox(store)
    writer = Writer(store, outbox, commit_interval_ms=interval_ms, commit_max=256,
                    cloud_online=lambda: online, clock=lambda: NOW_MS / 1000)
    return store, outbox, writer


def put(store: Store, key: bytes, value: bytes = b"v") -> Writes:
    return Writes().put(store.meta, key, value)


def test_many_jobs_and_messages_are_one_synced_write_and_callbacks_keep_their_order(tmp_path):
    async def scenario():
        store, outbox, writer = make(tmp_path / "db")
        done: list[int] = []
        last = asyncio.Event()
        before = store.synced_writes
        writer.start()
        for i in range(100):
            outbox.append(message(i))
            writer.messages_added()
            writer.submit(put(store, b"job/%03d" % i), lambda i=i: done.append(i))
        writer.submit(Writes(), last.set)
        await last.wait()
        assert done == list(range(100))
        assert store.synced_writes - before == 1
        assert writer.commits == 1 and writer.jobs_committed == 101
        assert outbox.uncommitted() == 0
        assert store.meta.get(b"job/099") == b"v"
        await writer.aclose()
        store.close()

    asyncio.run(scenario())


def test_a_job_does_not_wait_for_the_messages_aging(tmp_path):
    """Online, telemetry waits one interval for the cloud's PUBACK; a 204 does not wait with it."""

    async def scenario():
        store, outbox, writer = make(tmp_path / "db", online=True, interval_ms=60_000)
        outbox.append(Message("s1", NOW_MS, NOW_MS + 3_600_000, "", b"young"))
        writer.messages_added()
        durable = asyncio.Event()
        writer.start()
        writer.submit(put(store, b"twin/s1"), durable.set)
        await durable.wait()
        assert store.meta.get(b"twin/s1") == b"v"
        assert outbox.uncommitted() == 1  # still racing the cloud
        await writer.aclose()  # shutdown writes what is left, aged or not
        assert outbox.uncommitted() == 0
        store.close()

    asyncio.run(scenario())


def test_jobs_submitted_during_a_commit_go_together_into_the_next(tmp_path):
    async def scenario():
        store, _, writer = make(tmp_path / "db")
        second: list[int] = []
        all_done = asyncio.Event()

        def first_durable() -> None:
            # the first commit is done; these 50 arrive while nothing is being written
            for i in range(50):
                last = i == 49
                writer.submit(put(store, b"b/%02d" % i),
                              (lambda i=i: (second.append(i), all_done.set()))
                              if last else (lambda i=i: second.append(i)))

        writer.start()
        writer.submit(put(store, b"a"), first_durable)
        await all_done.wait()
        assert second == list(range(50))
        assert writer.commits == 2
        await writer.aclose()
        store.close()

    asyncio.run(scenario())


def test_a_failed_commit_holds_everything_and_retries_it_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "STORE_RETRY_SECS", 0)

    async def scenario():
        store, outbox, writer = make(tmp_path / "db", store_cls=FailingStore)
        store.reason = "IO error: Input/output error"
        store.fail = 2
        done: list[str] = []
        finished = asyncio.Event()
        writer.start()
        outbox.append(message(1))
        writer.messages_added()
        writer.submit(put(store, b"k", b"first"), lambda: done.append("first"))
        writer.submit(put(store, b"k", b"second"), lambda: (done.append("second"),
                                                            finished.set()))
        await finished.wait()
        assert done == ["first", "second"]
        assert store.meta.get(b"k") == b"second"  # replayed in submission order
        assert outbox.uncommitted() == 0 and outbox.stats.committed_messages == 1
        assert writer.store_error == ""  # recovered, and said so
        await writer.aclose()
        store.close()

    asyncio.run(scenario())


def test_a_full_disk_is_reported_once_and_nothing_is_answered(tmp_path):
    async def scenario():
        store, outbox, writer = make(tmp_path / "db", store_cls=FailingStore)
        store.fail = 10**6
        reported = asyncio.Event()
        reasons: list[str] = []
        writer.on_disk_full = lambda reason: (reasons.append(reason), reported.set())
        answered: list[int] = []
        writer.start()
        writer.submit(put(store, b"k"), lambda: answered.append(1))
        await reported.wait()
        assert "No space left" in reasons[0]
        assert answered == [] and writer.backlog == 1
        assert store.meta.get(b"k") is None
        await writer.aclose()  # the last commit fails too: it gives up instead of spinning
        assert answered == []

    asyncio.run(scenario())


def test_the_loop_thread_cannot_sync_but_the_writer_can(tmp_path):
    async def scenario():
        store, outbox, writer = make(tmp_path / "db")
        store.forbid_sync_on(threading.get_ident())
        with pytest.raises(SyncForbidden, match="never wait on the disk"):
            store.put(store.meta, b"direct", b"v", sync=True)
        store.put(store.meta, b"unsynced", b"v", sync=False)  # no fsync: allowed
        durable = asyncio.Event()
        writer.start()
        writer.submit(put(store, b"through-the-writer"), durable.set)
        await durable.wait()
        assert store.meta.get(b"through-the-writer") == b"v"
        with pytest.raises(SyncForbidden):
            store.close()  # flush_wal(True) is an fsync too
        await writer.aclose()
        store.allow_sync_on(threading.get_ident())
        store.close()

    asyncio.run(scenario())


def test_sequence_blocks_are_reserved_ahead_through_the_writer(tmp_path, monkeypatch):
    monkeypatch.setattr(outbox_module, "SEQ_BLOCK", 16)

    async def scenario():
        store, outbox, writer = make(tmp_path / "db")
        store.forbid_sync_on(threading.get_ident())  # the reservation must not sync here
        first_ceiling = ks.read_u64(store.meta.get(ks.SEQ_CEILING))
        writer.start()
        for i in range(40):  # through two and a half blocks
            outbox.append(message(i))
            writer.messages_added()
            await asyncio.sleep(0)
        await writer.aclose()
        ceiling = ks.read_u64(store.meta.get(ks.SEQ_CEILING))
        assert ceiling > first_ceiling
        assert ceiling > outbox.next_seq - 1  # every number handed out is below it
        store.allow_sync_on(threading.get_ident())
        store.close()
        reopened = Store(tmp_path / "db")
        assert Outbox(reopened).next_seq >= ceiling  # never reused after a restart
        reopened.close()

    asyncio.run(scenario())


def test_a_dead_letter_leaves_the_queue_only_once_it_is_durable(tmp_path):
    async def scenario():
        store, outbox, writer = make(tmp_path / "db")
        letters = DeadLetters(store, outbox, writer.submit)
        seq = outbox.append(message(1))
        writer.messages_added()
        assert letters.move(seq, message(1).priority, 0x87, NOW_MS)
        assert outbox.stats.dead_lettered == 0  # submitted, not yet durable
        assert letters.list() == []
        writer.start()
        await writer.aclose()
        assert outbox.stats.dead_lettered == 1
        assert [letter.seq for letter in letters.list()] == [seq]
        store.close()

    asyncio.run(scenario())


def test_submit_after_close_is_refused(tmp_path):
    async def scenario():
        store, _, writer = make(tmp_path / "db")
        writer.start()
        await writer.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            writer.submit(put(store, b"late"))
        store.close()

    asyncio.run(scenario())


def test_a_patch_storm_is_one_commit_and_each_204_gets_its_own_version(tmp_path):
    """The twin cache is write-through: patch after patch merges on the latest state before any
    commit, the store gets the latest document once, and every answer keeps its version."""
    from gateway.hub.twins import TwinStore

    async def scenario():
        store, _, writer = make(tmp_path / "db")
        twins = TwinStore(store, writer.submit)
        versions: list[int] = []
        writer.start()
        for i in range(100):
            twins.patch_reported("s1", {f"k{i % 3}": i}, versions.append)
        assert twins.get("s1").reported == {"$version": 101, "k0": 99, "k1": 97, "k2": 98}
        await writer.aclose()
        assert versions == list(range(2, 102))
        assert writer.commits == 1
        assert TwinStore(store).get("s1").reported["$version"] == 101  # read from the store
        store.close()

    asyncio.run(scenario())
