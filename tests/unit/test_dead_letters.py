"""Dead letters on real RocksDB: moved out of the outbox in one durable step, listed, dropped,
resent, and counted without decoding (status and every Prometheus scrape read the count)."""

from __future__ import annotations

import pytest

from gateway.storage import keyspace as ks
from gateway.storage.store import Batch, Store
from gateway.upstream.dead_letters import DeadLetters
from gateway.upstream.message import Message, encode_record
from gateway.upstream.outbox import Outbox

NOW = 1_700_000_000_000


def msg(i: int, device: str = "s1") -> Message:
    return Message(device, NOW + i, NOW + i + 60_000, f"i={i}", b"x" * 100)


class Harness:
    def __init__(self, path) -> None:
        self.path = path
        self.open()

    def open(self) -> None:
        self.store = Store(self.path)
        self.outbox = Outbox(self.store)
        self.letters = DeadLetters(self.store, self.outbox)

    def reopen(self) -> None:
        self.outbox.close()
        self.store.close()
        self.open()

    def refuse(self, n: int, commit: bool = True) -> list[int]:
        seqs = [self.outbox.append(msg(i)) for i in range(n)]
        if commit:
            self.outbox.commit_now()
        for seq in seqs:
            assert self.letters.move(seq, msg(0).priority, 0x87, NOW)
        return seqs


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path / "store")
    yield harness
    harness.store.close()


def test_a_moved_message_leaves_the_queue_and_is_listed(h):
    (seq,) = h.refuse(1)
    assert h.outbox.read(0, 10, NOW) == []
    assert h.outbox.stats.count == 0 and h.outbox.stats.dead_lettered == 1
    (letter,) = h.letters.list()
    assert (letter.seq, letter.reason, letter.refused_at_ms) == (seq, 0x87, NOW)
    assert letter.message == msg(0)


def test_a_message_still_in_memory_moves_too(h):
    h.refuse(2, commit=False)
    assert h.letters.count == 2
    assert h.outbox.commit_begin() is None  # nothing is left to write
    assert h.outbox.stats.acked_before_commit == 0


def test_the_count_is_kept_across_moves_drops_and_restarts(h):
    seqs = h.refuse(5)
    assert h.letters.count == 5
    assert h.letters.drop([seqs[0], seqs[1]]) == 2
    assert h.letters.drop([seqs[0]]) == 0  # already gone: not counted twice
    assert h.letters.count == 3
    h.reopen()
    assert h.letters.count == 3
    assert [d.seq for d in h.letters.list()] == seqs[2:]


def test_the_count_is_kept_not_recomputed_on_each_read(h):
    """status() reads the count on every scrape: it must not scan (let alone decode) the
    dead letters each time; a record removed behind its back shows that nothing is re-read."""
    seqs = h.refuse(3)
    batch = Batch()
    batch.delete(h.store.meta, ks.dlq_key(seqs[0]))
    h.store.write(batch, sync=False)
    assert h.letters.count == 3


def test_more_than_a_hundred_thousand_are_counted(h):
    """status used to report len(dead_letters(100_000)): never more than 100,000."""
    value = bytes(9) + b"not decoded for counting"
    batch = Batch()
    for seq in range(1, 100_002):
        batch.put(h.store.meta, ks.dlq_key(seq), value)
    h.store.write(batch, sync=False)
    h.reopen()
    assert h.letters.count == 100_001


def test_moving_the_same_seq_again_counts_it_once(h):
    """After a power cut between the dead-letter copy and the queue's delete, the message is
    in both places and is refused and moved again: one dead letter, not two."""
    (seq,) = h.refuse(1)
    h.reopen()  # the queue's delete is written here
    h.store.put(h.store.outbox, ks.seq_key(seq, msg(0).priority), encode_record(msg(0)),
                sync=False)  # as if that delete was lost
    h.reopen()
    assert h.letters.move(seq, msg(0).priority, 0x87, NOW)
    assert h.letters.count == 1


def test_command_lists_drops_and_resends(h):
    seqs = h.refuse(3)
    listed = h.letters.command("list", "all", None)["dead_letters"]
    assert [d["seq"] for d in listed] == seqs
    assert listed[0]["device_id"] == "s1" and listed[0]["reason_code"] == 0x87
    assert h.letters.command("drop", str(seqs[0]), None) == {"dropped": 1}
    accepted = []

    def accept(device_id, properties, payload, on_safe, priority):
        accepted.append((device_id, properties, payload, priority))
        on_safe()  # the resent copy is safe: its dead letter goes

    assert h.letters.command("resend", "all", accept) == {"resent": 2}
    assert [a[1] for a in accepted] == ["i=1", "i=2"]
    assert h.letters.count == 0 and h.letters.list() == []
    with pytest.raises(ValueError, match="no dead letter with seq"):
        h.letters.command("list", str(seqs[0]), None)
    with pytest.raises(ValueError, match="sequence number or 'all'"):
        h.letters.command("drop", "x", None)
    with pytest.raises(ValueError, match="unknown action"):
        h.letters.command("purge", "all", None)
