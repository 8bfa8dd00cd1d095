"""The gateway's loss ledger on real RocksDB: outcomes recorded where they happen, written with
the deletes they account for, settled only below the lowest queued seq, and the restart gap."""

from __future__ import annotations

from gateway.storage.store import Store
from gateway.upstream.message import Message
from gateway.upstream.outbox import SEQ_BLOCK, Outbox

NOW = 1_700_000_000_000


def msg(i: int, ttl_ms: int = 60_000) -> Message:
    return Message("s1", NOW + i, NOW + i + ttl_ms, "", b"x" * 10)


def settle(outbox: Outbox) -> dict:
    """A settlement as the daemon builds it, acknowledged by the broker."""
    doc = outbox.ledger.settlement("edge-1", outbox.settled_below(), outbox.next_seq)
    outbox.ledger.acknowledged(doc["to"])
    return doc


def test_a_first_start_skips_nothing_and_settles_below_the_lowest_queued(tmp_path):
    store = Store(tmp_path / "s")
    outbox = Outbox(store)
    seqs = [outbox.append(msg(i)) for i in range(5)]
    assert seqs[0] == 1
    outbox.ack(seqs[0], msg(0).size())
    outbox.ack(seqs[2], msg(2).size())  # out of order: 2 is still queued below it
    doc = settle(outbox)
    assert (doc["from"], doc["to"], doc["issued"]) == (1, seqs[1], 6)
    assert all(doc[k] == [] for k in ("expired", "dropped", "deadLettered", "skipped"))
    store.close()


def test_expired_dropped_and_dead_lettered_are_listed_with_the_ttl_that_applied(tmp_path):
    store = Store(tmp_path / "s")
    outbox = Outbox(store)
    short = [outbox.append(msg(i, ttl_ms=5_000)) for i in range(3)]
    rest = [outbox.append(msg(i)) for i in range(3, 8)]
    outbox.commit_now()
    outbox.expire(NOW + 10_000)
    outbox.drop_oldest(2)
    outbox.moved_out(rest[2], 9, msg(5))
    for seq in rest[3:]:
        outbox.ack(seq, msg(0).size())
    outbox.flush_deletes()
    doc = settle(outbox)
    assert doc["expired"] == [[short[0], short[-1], 5]]
    assert doc["dropped"] == [[rest[0], rest[1]]]
    assert doc["deadLettered"] == [[rest[2], rest[2]]]
    assert doc["to"] == doc["issued"] == rest[-1] + 1
    assert outbox.ledger.pending() == dict.fromkeys(
        ("expired", "dropped", "deadLettered", "skipped"), 0)
    store.close()


def test_accounts_not_yet_acknowledged_survive_a_kill_with_the_deletes_they_account_for(
        tmp_path):
    store = Store(tmp_path / "s")
    outbox = Outbox(store)
    seqs = [outbox.append(msg(i, ttl_ms=1_000)) for i in range(3)]
    outbox.commit_now()
    outbox.expire(NOW + 5_000)
    outbox.flush_deletes()  # the deletes and the accounts, in one unsynced batch
    store.close()  # no stopped(): as after a kill -9

    store = Store(tmp_path / "s")
    outbox = Outbox(store)
    doc = outbox.ledger.settlement("edge-1", outbox.settled_below(), outbox.next_seq)
    assert doc["expired"] == [[seqs[0], seqs[-1], 1]]
    # a kill: from the last acknowledged settlement to the new block, unknown, so skipped
    # (the expired ones in it are listed as expired too, and the cloud side counts that first)
    assert doc["skipped"] == [[1, outbox.next_seq - 1]]
    assert doc["from"] == 1 and doc["to"] == outbox.next_seq
    store.close()


def test_a_clean_stop_says_where_issuing_ended_so_only_the_block_is_skipped(tmp_path):
    store = Store(tmp_path / "s")
    outbox = Outbox(store)
    seqs = [outbox.append(msg(i)) for i in range(4)]
    outbox.commit_now()
    outbox.ack(seqs[0], msg(0).size())
    settle(outbox)
    outbox.close()
    outbox.stopped()
    store.close()

    store = Store(tmp_path / "s")
    outbox = Outbox(store)
    assert outbox.next_seq >= SEQ_BLOCK
    doc = outbox.ledger.settlement("edge-1", outbox.settled_below(), outbox.next_seq)
    assert doc["to"] == seqs[1], "the stored messages are still queued"
    assert outbox.ledger.open["skipped"].items == [[seqs[-1] + 1, outbox.next_seq - 1, 0]]
    for seq in seqs[1:]:
        outbox.ack(seq, msg(0).size())
    doc = settle(outbox)
    assert doc["skipped"] == [[seqs[-1] + 1, outbox.next_seq - 1]]
    assert doc["to"] == outbox.next_seq
    store.close()


def test_an_unreadable_state_starts_the_ledger_afresh_with_one_journal_line(tmp_path, caplog):
    from gateway.storage import keyspace as ks

    store = Store(tmp_path / "s")
    store.put(store.meta, ks.LEDGER, b"{not json", sync=True)
    with caplog.at_level("WARNING"):
        outbox = Outbox(store)
    assert [r for r in caplog.records if "stored accounts cannot be read" in r.getMessage()]
    assert outbox.ledger.settled == 1 and outbox.ledger.open["skipped"].items == []
    store.close()
