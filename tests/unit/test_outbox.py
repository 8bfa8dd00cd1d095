"""The outbox contract on real RocksDB files: order, ack race, TTL, restarts, seq reservation."""

from __future__ import annotations

import struct
import threading

import pytest

from gateway.storage.store import Store
from gateway.upstream.message import Message, decode_record, encode_record
from gateway.upstream.outbox import SEQ_BLOCK, Outbox, seq_key

NOW = 1_700_000_000_000


def msg(i: int, ttl_ms: int = 60_000, device: str = "s1") -> Message:
    return Message(device, NOW + i, NOW + i + ttl_ms, f"i={i}", b"x" * 100)


class Harness:
    """An outbox on a store directory, reopened at will as a restarted daemon would."""

    def __init__(self, path) -> None:
        self.path = path
        self.safe: list[int] = []
        self.open()

    def open(self) -> None:
        self.store = Store(self.path)
        self.outbox = Outbox(self.store, on_safe=self.safe.extend)

    def reopen(self, clean: bool = True) -> None:
        if clean:
            self.outbox.close()
        self.store.close()
        self.open()

    def drain(self) -> list[Message]:
        got = self.outbox.read(0, 10_000, NOW)
        for seq, m in got:
            self.outbox.ack(seq, m.size())
        self.outbox.flush_deletes()
        return [m for _, m in got]


@pytest.fixture
def h(tmp_path) -> Harness:
    harness = Harness(tmp_path / "store")
    yield harness
    harness.store.close()


def test_record_round_trip():
    m = Message("dev-ü", 1, 2, "a=b&c=%20", b"\x00\xff" * 50)
    assert decode_record(encode_record(m)) == m


def test_order_survives_commit_and_reopen(h):
    seqs = [h.outbox.append(msg(i)) for i in range(5)]
    h.outbox.commit_now()
    seqs += [h.outbox.append(msg(i)) for i in range(5, 10)]
    h.outbox.commit_now()
    assert seqs == sorted(seqs) and len(set(seqs)) == 10
    h.reopen()
    assert [m.properties for m in h.drain()] == [f"i={i}" for i in range(10)]
    assert h.outbox.stats.count == 0


def test_cloud_ack_before_commit_is_never_written(h):
    seq = h.outbox.append(msg(0))
    h.outbox.ack(seq, msg(0).size())
    assert h.safe == [seq]
    assert h.outbox.commit_begin() is None  # nothing left to write
    assert h.store.outbox.get(seq_key(seq)) is None
    assert h.outbox.stats.acked_before_commit == 1


def test_commit_makes_unacked_messages_safe(h):
    seqs = [h.outbox.append(msg(i)) for i in range(3)]
    assert h.safe == []
    assert h.outbox.commit_now() == seqs
    assert h.safe == seqs
    assert all(h.store.outbox.get(seq_key(s)) is not None for s in seqs)


def test_ack_during_commit_deletes_the_written_copy(h):
    seqs = [h.outbox.append(msg(i)) for i in range(3)]
    commit = h.outbox.commit_begin()
    h.outbox.ack(seqs[1], msg(1).size())  # cloud answers while the batch is being synced
    h.outbox.write(commit)
    assert h.outbox.commit_end(commit) == [seqs[0], seqs[2]]
    assert sorted(h.safe) == seqs
    h.outbox.flush_deletes()
    assert h.store.outbox.get(seq_key(seqs[1])) is None
    assert [m.properties for m in h.drain()] == ["i=0", "i=2"]


def test_read_during_commit_has_no_duplicates(h):
    for i in range(4):
        h.outbox.append(msg(i))
    commit = h.outbox.commit_begin()
    h.outbox.write(commit)  # written, but commit_end not yet run
    h.outbox.append(msg(4))
    got = h.outbox.read(0, 100, NOW)
    assert [m.properties for _, m in got] == [f"i={i}" for i in range(5)]


def test_commit_in_a_thread_while_appending(h):
    """The synced write runs off the event loop; appends and reads go on meanwhile."""
    for i in range(200):
        h.outbox.append(msg(i))
    commit = h.outbox.commit_begin()
    t = threading.Thread(target=h.outbox.write, args=(commit,))
    t.start()
    for i in range(200, 400):
        h.outbox.append(msg(i))
    t.join()
    h.outbox.commit_end(commit)
    h.outbox.commit_now()
    h.reopen()
    assert [m.properties for m in h.drain()] == [f"i={i}" for i in range(400)]


def test_uncommitted_messages_are_lost_only_if_never_safe(h):
    """A crash (no close) keeps what was committed and drops what was never made safe."""
    for i in range(3):
        h.outbox.append(msg(i))
    h.outbox.commit_now()
    h.outbox.append(msg(3))  # never committed, never acked: its PUBACK was never sent
    h.reopen(clean=False)
    assert [m.properties for m in h.drain()] == ["i=0", "i=1", "i=2"]


def test_seq_never_repeats_across_restarts(h):
    first = h.outbox.append(msg(0))
    h.outbox.ack(first, msg(0).size())  # delivered and forgotten, never written
    h.reopen(clean=False)
    second = h.outbox.append(msg(1))
    assert second > first


def test_seq_reservation_crosses_blocks(h):
    start = h.outbox.next_seq
    for i in range(SEQ_BLOCK + 10):
        seq = h.outbox.append(msg(i))
        h.outbox.ack(seq, msg(i).size())
    h.reopen(clean=False)
    assert h.outbox.append(msg(0)) > start + SEQ_BLOCK + 9


def test_expired_messages_are_dropped_and_counted(h):
    for i in range(5):
        h.outbox.append(msg(i, ttl_ms=10))
    for i in range(5, 8):
        h.outbox.append(msg(i, ttl_ms=10**9))
    h.outbox.commit_now()
    assert h.outbox.expire(NOW + 1000) == 5
    h.outbox.flush_deletes()
    assert h.outbox.stats.expired == 5
    assert [m.properties for m in h.drain()] == ["i=5", "i=6", "i=7"]


def test_expired_on_read_are_not_returned(h):
    h.outbox.append(msg(0, ttl_ms=10))
    h.outbox.append(msg(1))
    h.outbox.commit_now()
    got = h.outbox.read(0, 10, NOW + 1000)
    assert [m.properties for _, m in got] == ["i=1"]
    assert h.outbox.stats.expired == 1


def test_counts_survive_restart(h):
    for i in range(10):
        h.outbox.append(msg(i))
    h.outbox.commit_now()
    got = h.outbox.read(0, 4, NOW)
    for seq, m in got:
        h.outbox.ack(seq, m.size())
    h.reopen()
    assert h.outbox.stats.count == 6
    assert h.outbox.stats.bytes == 6 * msg(0).size()
    assert h.outbox.oldest_enqueued_ms() == NOW + 4


def test_pending_gives_stored_records_as_they_are_and_the_rest_as_messages(h):
    """A drain encodes what this release stored straight from its bytes; a message in memory, or
    a record of version 1 (a store from before priorities), comes as a Message."""
    stored = h.outbox.append(msg(0))
    h.outbox.commit_now()
    v1 = msg(1)
    fields = (v1.device_id.encode(), v1.properties.encode(), v1.payload)
    old = struct.pack(">BQQHHI", 1, v1.enqueued_ms, v1.expires_ms, *map(len, fields))
    h.store.put(h.store.outbox, seq_key(stored + 1), old + b"".join(fields), sync=False)
    h.reopen()
    in_memory = h.outbox.append(msg(2))
    got = h.outbox.pending(0, 10, NOW)
    assert [seq for seq, _ in got] == [stored, stored + 1, in_memory]
    assert got[0][1] == encode_record(msg(0))
    assert got[1][1] == v1 and got[2][1] == msg(2)
    assert h.outbox.read(0, 10, NOW) == [(stored, msg(0)), (stored + 1, v1), (in_memory, msg(2))]


def test_an_expired_stored_record_is_not_pending_but_counted(h):
    h.outbox.append(msg(0, ttl_ms=10))
    live = h.outbox.append(msg(1))
    h.outbox.commit_now()
    assert [seq for seq, _ in h.outbox.pending(0, 10, NOW + 100)] == [live]
    assert h.outbox.stats.expired == 1
    assert h.outbox.stats.count == 1 and h.outbox.stats.bytes == msg(1).size()


def test_corrupt_record_is_skipped_and_counted(h):
    h.outbox.append(msg(0))
    h.outbox.commit_now()
    h.store.put(h.store.outbox, seq_key(h.outbox.next_seq + 5), b"\x09garbage", sync=False)
    h.reopen()
    got = h.drain()
    assert [m.properties for m in got] == ["i=0"]
    assert h.outbox.stats.corrupt == 1


def test_commit_with_cutoff_takes_only_the_old_prefix(h):
    seqs = [h.outbox.append(msg(i)) for i in range(5)]  # enqueued at NOW+0 .. NOW+4
    assert h.outbox.oldest_uncommitted_ms() == NOW
    commit = h.outbox.commit_begin(enqueued_until_ms=NOW + 2)
    assert commit.seqs == seqs[:3]
    assert h.outbox.oldest_uncommitted_ms() == NOW + 3
    h.outbox.write(commit)
    h.outbox.commit_end(commit)
    assert h.safe == seqs[:3]
    assert h.outbox.uncommitted() == 2


def test_backlog_by_priority_counts_memory_disk_and_deletes(tmp_path):
    h = Harness(tmp_path)
    for i in range(6):
        h.outbox.append(Message("s1", NOW + i, NOW + 60_000, "", b"x", priority=i % 2))
    assert h.outbox.backlog_by_priority() == {0: 3, 1: 3}
    h.outbox.commit_now()
    h.outbox.append(Message("s1", NOW, NOW + 60_000, "", b"x", priority=5))
    got = h.outbox.read(0, 1, NOW)
    assert got[0][1].priority == 0, "the highest priority is read first"
    h.outbox.ack(got[0][0], got[0][1].size(), 0)
    assert h.outbox.backlog_by_priority() == {0: 2, 1: 3, 5: 1}
    h.reopen()
    assert h.outbox.backlog_by_priority() == {0: 2, 1: 3, 5: 1}
