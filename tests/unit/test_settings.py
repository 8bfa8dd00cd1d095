"""The gateway's desired twin: validation names the field, bad documents change nothing."""

from __future__ import annotations

import json

import pytest

from gateway.hub.settings import SettingsError, SettingsSync, parse_settings
from gateway.storage.store import Store


def doc(version: int = 1, **over) -> bytes:
    base = {"$version": version, "schemaVersion": "1.0", "routes": {},
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}
    base.update(over)
    return json.dumps(base).encode()


@pytest.mark.parametrize("payload, field", [
    (b"nope", "JSON"),
    (b"[]", "object"),
    (doc(version=0), "$version"),
    (doc(schemaVersion="9.9"), "schemaVersion"),
    (doc(storeAndForwardConfiguration={"timeToLiveSecs": 0}), "timeToLiveSecs"),
    (doc(storeAndForwardConfiguration={"timeToLiveSecs": 2147483648}), "timeToLiveSecs"),
    (doc(storeAndForwardConfiguration={"timeToLiveSecs": "60"}), "timeToLiveSecs"),
    (doc(storeAndForwardConfiguration={"timeToLiveSecs": True}), "timeToLiveSecs"),
    (doc(storeAndForwardConfiguration=[]), "storeAndForwardConfiguration"),
    (doc(routes=["FROM /messages/* INTO $upstream"]), "routes"),
])
def test_bad_documents_name_the_field(payload, field):
    with pytest.raises(SettingsError, match=field.replace("$", r"\$")):
        parse_settings(payload)


def test_limits_are_accepted():
    assert parse_settings(doc(storeAndForwardConfiguration={"timeToLiveSecs": 1})).ttl_secs == 1
    top = {"timeToLiveSecs": 2147483647}
    assert parse_settings(doc(storeAndForwardConfiguration=top)).ttl_secs == 2147483647
    assert parse_settings(doc(storeAndForwardConfiguration={})).ttl_secs is None


def test_route_checker_refusal_refuses_the_whole_document(tmp_path):
    def check(routes: dict) -> None:
        if "bad" in routes:
            raise ValueError("route 'bad': expected INTO at column 20")

    store = Store(tmp_path)
    sync = SettingsSync(store, check)
    assert sync.apply(doc(1, routes={"good": "FROM /messages/* INTO $upstream"})) == (
        True, "applied")
    applied, reason = sync.apply(doc(2, routes={"bad": "FROM"}))
    assert not applied and "expected INTO" in reason
    assert sync.settings.version == 1 and "good" in sync.settings.routes
    store.close()


def test_settings_survive_a_restart_and_only_move_forward(tmp_path):
    store = Store(tmp_path)
    sync = SettingsSync(store)
    assert sync.apply(doc(3, storeAndForwardConfiguration={"timeToLiveSecs": 60}))[0]
    assert sync.apply(doc(2)) == (False, "unchanged")
    store.close()
    store = Store(tmp_path)
    sync = SettingsSync(store)
    assert (sync.settings.version, sync.settings.ttl_secs) == (3, 60)
    store.close()
