"""Twin merge rules and the twin store on real RocksDB files (versions, dirty state, reopen)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.hub.twins import (
    TwinError,
    TwinStore,
    desired_delta,
    merge_patch,
    parse_document,
    parse_patch,
)
from gateway.storage.store import Store

json_leaf = st.one_of(st.integers(), st.text(max_size=5), st.booleans())
props = st.dictionaries(st.text(min_size=1, max_size=4).filter(lambda k: not k.startswith("$")),
                        json_leaf, max_size=6)


def test_merge_patch_follows_iot_hub_rules():
    doc = {"a": 1, "nested": {"x": 1, "y": 2}, "gone": True}
    merge_patch(doc, {"a": 2, "nested": {"y": None, "z": 3}, "gone": None, "new": [1]})
    assert doc == {"a": 2, "nested": {"x": 1, "z": 3}, "new": [1]}


def test_merge_patch_refuses_deep_nesting():
    deep: dict = {}
    cursor = deep
    for _ in range(11):
        cursor["k"] = {}
        cursor = cursor["k"]
    with pytest.raises(TwinError, match="deeper"):
        merge_patch({}, deep)


@given(props, props)
def test_desired_delta_takes_old_to_new(old, new):
    old, new = dict(old, **{"$version": 1}), dict(new, **{"$version": 2})
    patched = dict(old)
    merge_patch(patched, desired_delta(old, new))
    patched["$version"] = 2
    assert {k: v for k, v in patched.items()} == new


@pytest.mark.parametrize("payload, reason", [
    (b"[1]", "JSON object"), (b"{", "not valid JSON"), (b'{"$x": 1}', "reserved"),
    (b"x" * 40000, "limit"),
])
def test_bad_patches_are_refused_with_a_reason(payload, reason):
    with pytest.raises(TwinError, match=reason):
        parse_patch(payload)


@pytest.mark.parametrize("payload", [b'{"a": 1}', b'{"$version": "3"}', b'{"$version": 0}',
                                     b'{"$version": true}', b"7"])
def test_cloud_documents_need_an_integer_version(payload):
    with pytest.raises(TwinError):
        parse_document(payload, "desired twin")


def test_reported_versions_persist_and_dirty_survives_reopen(tmp_path):
    store = Store(tmp_path)
    twins = TwinStore(store)
    assert twins.get("d").document() == {"desired": {"$version": 1}, "reported": {"$version": 1}}
    assert [twins.patch_reported("d", {"n": i}) for i in range(3)] == [2, 3, 4]
    assert twins.dirty_devices() == ["d"]
    store.close()  # no mark_published: the cloud never saw it

    store = Store(tmp_path)
    twins = TwinStore(store)
    assert twins.get("d").reported == {"$version": 4, "n": 2}
    assert twins.dirty_devices() == ["d"]
    twins.mark_published("d", 3)  # an older publish's ack does not clean a newer state
    assert twins.dirty_devices() == ["d"]
    twins.mark_published("d", 4)
    assert twins.dirty_devices() == []
    store.close()


def test_desired_only_moves_forward(tmp_path):
    store = Store(tmp_path)
    twins = TwinStore(store)
    assert twins.apply_desired("d", {"$version": 1, "a": 1}) == {"$version": 1, "a": 1}
    assert twins.apply_desired("d", {"$version": 1, "a": 2}) is None
    assert twins.apply_desired("d", {"$version": 3, "b": 2}) == {"$version": 3, "b": 2, "a": None}
    assert twins.apply_desired("d", {"$version": 2, "a": 9}) is None
    assert twins.get("d").desired == {"$version": 3, "b": 2}
    store.close()


def test_a_newer_cloud_reported_copy_keeps_versions_moving_forward(tmp_path):
    store = Store(tmp_path)
    twins = TwinStore(store)
    # a replaced store: the cloud has version 40, we have nothing newer -> adopt it
    assert twins.cloud_reported("d", {"$version": 40, "x": 1}) is False
    assert twins.get("d").reported == {"$version": 40, "x": 1}
    assert twins.patch_reported("d", {"y": 2}) == 41
    # our own publish comes back: acknowledged
    assert twins.cloud_reported("d", {"$version": 41, "x": 1, "y": 2}) is False
    assert twins.dirty_devices() == []
    # offline patch, and the cloud somehow has a higher version: ours wins above it
    assert twins.patch_reported("d", {"z": 3}) == 42
    assert twins.cloud_reported("d", {"$version": 50, "old": True}) is True
    assert twins.get("d").reported == {"$version": 51, "x": 1, "y": 2, "z": 3}
    store.close()
