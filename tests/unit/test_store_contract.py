"""The contract of the store interface, on real RocksDB files: what every user relies on.

Scans are in bytewise key order and bounded by their prefix; first and last work in a family
and under a prefix; a batch across families is all or nothing; deletes in a batch apply with
its puts; a reopened store holds everything written; and a process killed with SIGKILL keeps
both its synced and its unsynced writes (the write-ahead log is in the page cache once `write`
returns). Only synced writes survive a power cut: tests/faults/test_power.py checks that, with a
filesystem that drops what was not fsync'd.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from gateway.storage import keyspace as ks
from gateway.storage.store import COLUMN_FAMILIES, Batch, Store, SyncForbidden


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


def put_all(store: Store, family, items) -> None:
    batch = Batch()
    for key, value in items:
        batch.put(family, key, value)
    store.write(batch, sync=False)


def test_every_family_opens():
    assert set(COLUMN_FAMILIES) == {"outbox", "meta", "devicebound"}


def test_scan_is_in_bytewise_order_which_is_numeric_for_big_endian_numbers(store):
    seqs = [256, 1, 255, 65536, 2]
    put_all(store, store.outbox, [(ks.seq_key(s, 9), b"%d" % s) for s in seqs])
    assert [ks.key_seq(k) for k, _ in store.outbox.scan(ks.lane(9))] == sorted(seqs)


def test_a_scan_stays_under_its_prefix(store):
    put_all(store, store.devicebound, [
        (ks.devicebound_key("a", 1), b"a1"), (ks.devicebound_key("a", 2), b"a2"),
        (ks.devicebound_key("ab", 1), b"ab1"), (ks.devicebound_key("b", 1), b"b1"),
        (b"a", b"bare"),
    ])
    a = ks.devicebound_prefix("a")
    assert [v for _, v in store.devicebound.scan(a)] == [b"a1", b"a2"]  # not "ab"'s, not "a"
    assert list(store.devicebound.keys(a)) == [k for k, _ in store.devicebound.scan(a)]
    assert [v for _, v in store.devicebound.scan(ks.devicebound_prefix("ab"))] == [b"ab1"]
    assert list(store.devicebound.scan(ks.devicebound_prefix("c"))) == []
    # a bare prefix is a prefix: "a" matches "a\0...", "ab\0..." and "a" itself
    assert len(list(store.devicebound.scan(b"a"))) == 4
    assert len(list(store.devicebound.scan())) == 5


def test_a_scan_starts_at_start_inclusive_and_never_before_its_prefix(store):
    put_all(store, store.outbox, [(ks.seq_key(s, p), b"") for p in (0, 1) for s in (1, 2, 3)])
    lane = ks.lane(1)
    assert [ks.key_seq(k) for k, _ in store.outbox.scan(lane, ks.seq_key(2, 1))] == [2, 3]
    assert [ks.key_seq(k) for k, _ in store.outbox.scan(lane, ks.seq_key(4, 1))] == []
    # a start below the prefix starts at the prefix: lane 0 is not read
    assert [k[0] for k, _ in store.outbox.scan(lane, ks.seq_key(1, 0))] == [1, 1, 1]


def test_a_page_is_a_scan_cut_at_its_limit_and_at_its_prefix_end(store):
    put_all(store, store.outbox, [(ks.seq_key(s, p), b"%d/%d" % (p, s))
                                  for p in (3, 4, 5) for s in range(1, 8)])
    put_all(store, store.outbox, [(b"\x04\xff\xff", b"ff"), (b"\x05", b"bare 5")])
    lane = ks.lane(4)
    whole = list(store.outbox.scan(lane))
    assert len(whole) == 8 and whole[-1][1] == b"ff"  # lane 4 alone, its last key all 0xff
    assert store.outbox.page(lane, ks.seq_key(3, 4), 100) == list(
        store.outbox.scan(lane, ks.seq_key(3, 4)))
    assert store.outbox.page(lane, ks.seq_key(3, 4), 2) == whole[2:4]
    assert store.outbox.page(lane, b"", 3) == whole[:3]  # a start before the prefix
    assert store.outbox.page(ks.lane(6), ks.seq_key(1, 6), 10) == []
    assert store.outbox.page(b"\xff", b"\xff", 10) == []  # a prefix with no successor


def test_first_and_last_in_a_family_and_under_a_prefix(store):
    assert store.outbox.first() is None and store.outbox.last() is None
    assert store.outbox.first(ks.lane(3)) is None and store.outbox.last(ks.lane(3)) is None
    put_all(store, store.outbox, [(ks.seq_key(s, p), bytes((p, s)))
                                  for p in (0, 3, 9) for s in (5, 6, 7)])
    assert store.outbox.first() == (ks.seq_key(5, 0), bytes((0, 5)))
    assert store.outbox.last() == (ks.seq_key(7, 9), bytes((9, 7)))
    assert store.outbox.first(ks.lane(3)) == (ks.seq_key(5, 3), bytes((3, 5)))
    assert store.outbox.last(ks.lane(3)) == (ks.seq_key(7, 3), bytes((3, 7)))
    assert store.outbox.first(ks.lane(4)) is None and store.outbox.last(ks.lane(4)) is None


def test_last_under_a_prefix_that_ends_in_ff_and_next_to_its_successor(store):
    put_all(store, store.meta, [(b"p\xff", b"1"), (b"p\xff\xff", b"2"), (b"q", b"3"),
                                (b"\xff\xff", b"4")])
    assert store.meta.last(b"p") == (b"p\xff\xff", b"2")  # b"q" is the successor: not taken
    assert store.meta.last(b"p\xff") == (b"p\xff\xff", b"2")
    assert store.meta.last(b"\xff") == (b"\xff\xff", b"4")
    assert store.meta.last(b"q") == (b"q", b"3")


def test_a_batch_across_families_is_applied_whole(store):
    batch = Batch()
    batch.put(store.outbox, ks.seq_key(1, 9), b"record")
    batch.put(store.meta, ks.DISK_COUNT, ks.u64(1))
    batch.put(store.devicebound, ks.devicebound_key("a", 1), b"c2d")
    assert len(batch) == 3
    assert store.outbox.get(ks.seq_key(1, 9)) is None  # nothing before write
    store.write(batch, sync=True)
    assert store.outbox.get(ks.seq_key(1, 9)) == b"record"
    assert ks.read_u64(store.meta.get(ks.DISK_COUNT)) == 1
    assert store.devicebound.get(ks.devicebound_key("a", 1)) == b"c2d"


_BATCHES = textwrap.dedent("""
    import sys
    from gateway.storage import keyspace as ks
    from gateway.storage.store import Batch, Store
    store = Store(sys.argv[1])
    seq = 0
    while True:  # until killed: records and their counter, one batch each time
        batch = Batch()
        for _ in range(200):
            seq += 1
            batch.put(store.outbox, ks.seq_key(seq, 9), bytes(200))
        batch.put(store.meta, ks.DISK_COUNT, ks.u64(seq))
        store.write(batch, sync=False)
        if seq == 20_000:
            print("running", flush=True)
""")


def test_a_batch_across_families_is_all_or_nothing_when_the_writer_is_killed(tmp_path):
    """Killed in the middle of a stream of batches, the store holds exactly the records that
    its counter counts: never the records of a batch without its counter, nor the reverse."""
    path = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", _BATCHES, str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    store = Store(path)
    try:
        count = ks.read_u64(store.meta.get(ks.DISK_COUNT))
        assert count >= 20_000 and count % 200 == 0
        assert sum(1 for _ in store.outbox.keys(b"")) == count
        assert ks.key_seq(store.outbox.last()[0]) == count
    finally:
        store.close()


def test_deletes_in_a_batch_apply_with_its_puts(store):
    put_all(store, store.outbox, [(ks.seq_key(s, 9), b"x") for s in (1, 2, 3)])
    batch = Batch()
    batch.delete(store.outbox, ks.seq_key(1, 9))
    batch.delete(store.outbox, ks.seq_key(9, 9))  # absent: no error
    batch.put(store.meta, ks.DISK_COUNT, ks.u64(2))
    batch.put(store.outbox, ks.seq_key(4, 9), b"x")
    batch.delete(store.outbox, ks.seq_key(4, 9))  # later in the batch wins
    store.write(batch, sync=False)
    assert [ks.key_seq(k) for k in store.outbox.keys(ks.lane(9))] == [2, 3]
    assert store.outbox.first(ks.lane(9))[0] == ks.seq_key(2, 9)
    assert ks.read_u64(store.meta.get(ks.DISK_COUNT)) == 2


def test_reopen_keeps_everything(tmp_path):
    path = tmp_path / "store"
    store = Store(path)
    put_all(store, store.outbox, [(ks.seq_key(s, 9), b"o%d" % s) for s in range(1, 101)])
    store.put(store.meta, ks.twin_key("a"), b"{}", sync=True)
    store.put(store.devicebound, ks.devicebound_key("a", 1), b"c2d", sync=False)
    store.close()
    store = Store(path)
    try:
        assert [v for _, v in store.outbox.scan()] == [b"o%d" % s for s in range(1, 101)]
        assert store.meta.get(ks.twin_key("a")) == b"{}"
        assert store.devicebound.get(ks.devicebound_key("a", 1)) == b"c2d"
    finally:
        store.close()


_WRITER = textwrap.dedent("""
    import os, signal, sys
    from gateway.storage import keyspace as ks
    from gateway.storage.store import Batch, Store
    store = Store(sys.argv[1])
    for seq in range(1, 1001):
        batch = Batch()
        batch.put(store.outbox, ks.seq_key(seq, 9), b"m%d" % seq)
        batch.put(store.meta, ks.DISK_COUNT, ks.u64(seq))
        store.write(batch, sync=sys.argv[2] == "sync")
    print("written", flush=True)
    signal.pause()  # killed here: nothing is flushed or closed
""")


@pytest.mark.parametrize("mode", ["sync", "nosync"])
def test_a_sigkill_keeps_every_write_that_returned_synced_or_not(tmp_path, mode):
    """Both survive a process kill (RocksDB's WAL is in the page cache when write returns);
    only synced writes survive a power cut, which tests/faults/test_power.py checks."""
    path = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), mode],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = Store(path)
    try:
        assert [v for _, v in store.outbox.scan(ks.lane(9))] == [b"m%d" % s for s in
                                                                 range(1, 1001)]
        assert ks.read_u64(store.meta.get(ks.DISK_COUNT)) == 1000
    finally:
        store.close()


def test_a_synced_write_from_a_forbidden_thread_raises_and_writes_nothing(store):
    store.forbid_sync_on(threading.get_ident())
    with pytest.raises(SyncForbidden, match="must never wait on the disk"):
        store.put(store.meta, b"k", b"synced", sync=True)
    assert store.meta.get(b"k") is None
    store.put(store.meta, b"k", b"unsynced", sync=False)  # unsynced writes stay allowed
    assert store.meta.get(b"k") == b"unsynced"
    errors = []

    def elsewhere() -> None:  # another thread (the writer) may still sync
        try:
            store.put(store.meta, b"k", b"from the writer", sync=True)
        except Exception as exc:
            errors.append(exc)

    worker = threading.Thread(target=elsewhere)
    worker.start()
    worker.join()
    assert errors == [] and store.meta.get(b"k") == b"from the writer"
    store.allow_sync_on(threading.get_ident())
    store.put(store.meta, b"k", b"allowed again", sync=True)
    assert store.meta.get(b"k") == b"allowed again"
