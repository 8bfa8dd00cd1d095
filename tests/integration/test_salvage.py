"""Issue 6: start-up on a damaged store. Real RocksDB files are damaged three ways; the daemon
starts anyway, quarantines the damaged copy, salvages what it can read and says so loudly."""

from __future__ import annotations

import json

import pytest

from gateway.child.registry_sync import RegistrySync
from gateway.storage.store import Store
from gateway.upstream.message import Message
from gateway.upstream.outbox import Outbox
from tests.support.clients import CloudVerifier, new_key, registry_doc

NOW_MS = 4_000_000_000_000  # far in the future: nothing expires during the test


def make_store(path, messages: int = 500) -> None:
    """A store with a registry and `messages` queued, flushed to SST files and closed."""
    store = Store(path)
    RegistrySync(store).apply(registry_doc(3, {"s1": new_key()}))
    outbox = Outbox(store)
    for i in range(messages):
        outbox.append(Message("s1", NOW_MS + i, NOW_MS + 10**9, "",
                              json.dumps({"device": "s1", "i": i}).encode()))
    outbox.commit_now()
    store._db.flush()
    outbox.close()
    store.close()


def damage_truncated_sst(path):
    sst = max(path.glob("*.sst"), key=lambda p: p.stat().st_size)
    data = sst.read_bytes()
    sst.write_bytes(data[: len(data) // 2])


def damage_garbled_current(path):
    (path / "CURRENT").write_bytes(b"MANIFEST-99999\n")


def damage_deleted_manifest(path):
    for manifest in path.glob("MANIFEST-*"):
        manifest.unlink()


@pytest.mark.parametrize("damage", [damage_truncated_sst, damage_garbled_current,
                                    damage_deleted_manifest])
def test_a_damaged_store_is_quarantined_and_salvaged(gateways, damage):
    gw = gateways(cloud_url="")
    make_store(gw.store)
    damage(gw.store)
    gw.start()  # READY: the daemon did not refuse to start
    status = gw.status()
    report = status["salvage"]
    assert report is not None, "the damage was noticed"
    quarantine = gw.store / report["quarantine"].rsplit("/", 1)[1]
    assert quarantine.is_dir() and any(quarantine.iterdir()), "the damaged copy is kept"
    assert "was damaged and could not be opened" in gw.log_text()
    assert status["backlog"]["messages"] == report["messages"]
    print(f"{damage.__name__}: salvaged {report['messages']} of 500 messages, "
          f"{report['unreadable']} unreadable, {report['other_records']} other records, "
          f"registry version {status['registry_version']}, error {report['error']!r}")
    if damage is not damage_truncated_sst:  # the SSTs are whole: everything comes back
        assert report["messages"] == 500 and status["registry_version"] == 3
    gw.terminate()
    gw.start()
    assert gw.status()["salvage"] is None, "the salvaged store opens cleanly after"


def test_salvaged_messages_reach_the_cloud(cloud, gateways):
    gw = gateways(cloud_url=cloud.url)
    make_store(gw.store, messages=200)
    damage_garbled_current(gw.store)
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    gw.start()
    verifier.wait_for(lambda m: len({x.i for x in m}) == 200, what="the salvaged 200")
