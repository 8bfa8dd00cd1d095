"""open_or_salvage on real RocksDB files damaged three ways: the damaged copy is moved aside, what
can be read is copied into a fresh store, and a store that is only in use is left alone."""

from __future__ import annotations

import json

import pytest

from gateway.child.registry_sync import RegistrySync
from gateway.errors import StoreError
from gateway.storage.salvage import QUARANTINE_PREFIX, open_or_salvage
from gateway.storage.store import Store
from gateway.upstream.message import Message
from gateway.upstream.outbox import Outbox, seq_key
from tests.support.clients import new_key, registry_doc

NOW_MS = 4_000_000_000_000  # far ahead: nothing expires during the test
MESSAGES = 300


def make_store(path, messages: int = MESSAGES) -> None:
    """A store with a registry (version 3) and `messages` queued, flushed to tables and closed."""
    store = Store(path)
    RegistrySync(store).apply(registry_doc(3, {"s1": new_key()}))
    outbox = Outbox(store)
    for i in range(messages):
        outbox.append(Message("s1", NOW_MS + i, NOW_MS + 10**9, "", json.dumps({"i": i}).encode()))
    outbox.commit_now()
    store.reclaim_outbox()  # flush: the outbox is in table files, not only the log
    outbox.close()
    store.close()


def queued(store: Store) -> list[int]:
    return [json.loads(m.payload)["i"] for _, m in Outbox(store).read(0, 10_000, NOW_MS)]


def garble_current(path) -> None:
    (path / "CURRENT").write_bytes(b"MANIFEST-99999\n")


def delete_manifests(path) -> None:
    for manifest in path.glob("MANIFEST-*"):
        manifest.unlink()


def truncate_largest_table(path) -> None:
    sst = max(path.glob("*.sst"), key=lambda p: p.stat().st_size)
    sst.write_bytes(sst.read_bytes()[: sst.stat().st_size // 2])


def test_a_healthy_store_just_opens(tmp_path):
    path = tmp_path / "store"
    make_store(path)
    store, report = open_or_salvage(path)
    try:
        assert report is None
        assert queued(store) == list(range(MESSAGES))
    finally:
        store.close()
    assert not list(path.glob(f"{QUARANTINE_PREFIX}*"))


@pytest.mark.parametrize("damage", [garble_current, delete_manifests])
def test_a_damaged_store_is_quarantined_and_everything_comes_back(tmp_path, damage):
    path = tmp_path / "store"
    make_store(path)
    damaged_files = sorted(p.name for p in path.iterdir())
    damage(path)
    (path / "control.sock").write_bytes(b"")  # not part of the database: stays where it is

    store, report = open_or_salvage(path)
    try:
        assert report is not None and report.error == ""
        assert report.quarantine.parent == path
        assert report.quarantine.name.startswith(QUARANTINE_PREFIX)
        kept = {p.name for p in report.quarantine.iterdir()}
        assert kept >= set(damaged_files) - {p for p in damaged_files if p.startswith("MANIFEST")}
        assert (path / "control.sock").exists()
        assert report.messages == MESSAGES and report.unreadable == 0
        assert report.other_records > 0, "the registry and the counters are records too"
        assert queued(store) == list(range(MESSAGES))
        assert Outbox(store).stats.count == MESSAGES, "the counters match what was salvaged"
        assert RegistrySync(store).registry.version == 3
    finally:
        store.close()

    store, again = open_or_salvage(path)
    store.close()
    assert again is None, "the salvaged store opens cleanly"


def test_a_truncated_table_loses_only_what_it_held(tmp_path):
    path = tmp_path / "store"
    make_store(path)
    truncate_largest_table(path)
    store, report = open_or_salvage(path)
    try:
        assert report is not None
        got = queued(store)
        assert len(got) == report.messages <= MESSAGES
        assert got == sorted(got), "what comes back keeps its order"
        assert Outbox(store).stats.count == report.messages
    finally:
        store.close()
    assert any(report.quarantine.iterdir()), "the damaged copy is kept for inspection"


def test_records_this_release_cannot_read_are_counted_and_left_behind(tmp_path):
    path = tmp_path / "store"
    make_store(path, messages=5)
    store = Store(path)
    store.put(store.outbox, seq_key(10**6), b"\xff not a record", sync=True)
    store.close()
    garble_current(path)

    store, report = open_or_salvage(path)
    try:
        assert (report.messages, report.unreadable) == (5, 1)
        assert queued(store) == list(range(5))
    finally:
        store.close()


def test_a_store_in_use_is_not_mistaken_for_a_damaged_one(tmp_path):
    path = tmp_path / "store"
    make_store(path, messages=3)
    holder = Store(path)  # another process would hold the same lock
    try:
        with pytest.raises(StoreError, match="cannot open the store"):
            open_or_salvage(path)
        assert not list(path.glob(f"{QUARANTINE_PREFIX}*")), "nothing was moved aside"
        assert queued(holder) == [0, 1, 2]
    finally:
        holder.close()
