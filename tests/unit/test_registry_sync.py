"""RegistrySync on a real store: documents apply whole or not at all, versions only move forward,
revoked children are named, and the registry in force survives a restart."""

from __future__ import annotations

import json

import pytest

from gateway.child.registry_sync import RegistrySync
from gateway.storage.store import Store
from tests.support.clients import new_key, registry_doc


def child(device: str, status: str = "enabled") -> dict:
    return {"deviceId": device, "status": status, "auth": {"type": "sas", "primaryKey": new_key()}}


def doc(version: int, *children: dict) -> bytes:
    return json.dumps({"version": version, "children": list(children)}).encode()


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store")
    yield store
    store.close()


def test_before_any_document_nobody_is_known(store):
    sync = RegistrySync(store)
    assert sync.registry.version < 0 and not sync.registry.children


def test_a_valid_document_applies(store):
    sync = RegistrySync(store)
    change = sync.apply(registry_doc(1, {"s1": new_key(), "s2": new_key()}))
    assert change.applied and change.reason == "applied" and change.revoked == ()
    assert sync.registry.version == 1
    assert sorted(sync.registry.children) == ["s1", "s2"]


def test_the_same_document_again_changes_nothing(store):
    sync = RegistrySync(store)
    data = registry_doc(1, {"s1": new_key()})
    sync.apply(data)
    again = sync.apply(data)
    assert not again.applied and again.reason == "unchanged"
    assert sync.last_refusal == ""


def test_versions_only_move_forward(store):
    sync = RegistrySync(store)
    assert sync.apply(registry_doc(5, {"new": new_key()})).applied
    stale = sync.apply(registry_doc(4, {"old": new_key()}))
    assert not stale.applied
    assert "version 4 is older than version 5" in stale.reason
    assert sync.last_refusal == stale.reason
    assert list(sync.registry.children) == ["new"] and sync.registry.version == 5
    assert sync.apply(registry_doc(6, {"newer": new_key()})).applied
    assert list(sync.registry.children) == ["newer"]


def test_an_edit_under_the_same_version_applies(store):
    """Equal is not older: a re-published document with the same version still counts."""
    sync = RegistrySync(store)
    sync.apply(registry_doc(2, {"s1": new_key()}))
    assert sync.apply(registry_doc(2, {"s1": new_key(), "s2": new_key()})).applied
    assert sorted(sync.registry.children) == ["s1", "s2"]


@pytest.mark.parametrize(("data", "named"), [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (json.dumps({"version": -1, "children": []}).encode(), "version"),
    (json.dumps({"version": 3, "children": {}}).encode(), "children: expected a list"),
    (doc(3, child("s1"), {**child("s2"), "status": "maybe"}), "children[1].status"),
    (doc(3, child("s1"), {**child("s1")}), "duplicate deviceId"),
    (doc(3, child("s1"), {"deviceId": "bad/id", "status": "enabled",
                          "auth": {"type": "sas", "primaryKey": new_key()}}),
     "children[1].deviceId"),
    (doc(3, {"deviceId": "s3", "status": "enabled", "auth": {"type": "sas",
                                                              "primaryKey": "***"}}),
     "children[0].auth.primaryKey"),
])
def test_a_refused_document_leaves_the_registry_in_force(store, data, named):
    sync = RegistrySync(store)
    sync.apply(registry_doc(2, {"kept": new_key()}))
    change = sync.apply(data)
    assert not change.applied and named in change.reason
    assert sync.last_refusal == change.reason
    assert list(sync.registry.children) == ["kept"] and sync.registry.version == 2


def test_children_removed_or_disabled_are_revoked(store):
    sync = RegistrySync(store)
    sync.apply(doc(1, child("a"), child("b"), child("c", "disabled")))
    change = sync.apply(doc(2, child("a"), child("b", "disabled")))
    assert change.applied and change.revoked == ("b",), "c was not enabled: nothing to revoke"
    change = sync.apply(doc(3, child("b")))
    assert change.revoked == ("a",)
    assert sync.registry.children["b"].enabled


def test_the_registry_in_force_survives_a_restart(tmp_path):
    path = tmp_path / "store"
    store = Store(path)
    sync = RegistrySync(store)
    sync.apply(doc(7, child("s1"), child("s2", "disabled")))
    sync.apply(b"{ broken")  # refused: must not reach the cache
    before = sync.registry
    store.close()

    store = Store(path)
    try:
        after = RegistrySync(store).registry
    finally:
        store.close()
    assert after == before
    assert after.version == 7 and not after.children["s2"].enabled
