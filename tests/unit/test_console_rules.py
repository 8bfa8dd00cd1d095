"""The console's own rules, without a socket: who may listen where, the password, the form
token and Origin, and how the pages word the fleet, a twin and the ledger."""

from __future__ import annotations

import base64

import pytest

from gateway.console.access import FormGuard, Listen, check_listen, parse_listen, password_ok
from gateway.console.views import fleet_cells, ledger_cells, twin_sides
from gateway.operator import Accounts, GatewayRow, OperatorUsageError


@pytest.mark.parametrize("listen", [
    Listen("127.0.0.1", 8080), Listen("::1", 8080), Listen("localhost", 8080),
    Listen("0.0.0.0", 8080, password="p", tls_cert="c", tls_key="k"),
    Listen("192.0.2.7", 8080, tls_cert="c", tls_key="k", client_ca="ca"),
])
def test_loopback_or_protected_addresses_are_allowed(listen):
    check_listen(listen)


@pytest.mark.parametrize("listen, words", [
    (Listen("0.0.0.0", 8080), "without a password"),
    (Listen("192.0.2.7", 8080, password="p"), "without TLS"),
    (Listen("127.0.0.1", 8080, tls_cert="c"), "--tls-cert and --tls-key go together"),
    (Listen("127.0.0.1", 8080, client_ca="ca"), "--client-ca needs --tls-cert"),
])
def test_unprotected_addresses_are_refused(listen, words):
    with pytest.raises(OperatorUsageError, match=words):
        check_listen(listen)


def test_listen_addresses():
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8080", ":8080", "host:", "host:99999"):
        with pytest.raises(OperatorUsageError, match="--listen"):
            parse_listen(bad)


def basic(user_password: str) -> str:
    return "Basic " + base64.b64encode(user_password.encode()).decode()


def test_the_password_is_checked_whatever_the_user_name():
    listen = Listen("0.0.0.0", 1, password="s3cret:x", tls_cert="c", tls_key="k")
    assert password_ok(listen, basic("anyone:s3cret:x"))
    assert not password_ok(listen, basic("anyone:s3cret"))
    assert not password_ok(listen, "Bearer s3cret:x") and not password_ok(listen, "Basic !!")
    assert password_ok(Listen("127.0.0.1", 1), ""), "no password asked on loopback without one"


def test_a_change_needs_the_token_and_no_foreign_origin():
    guard = FormGuard()
    here = {"host": "127.0.0.1:8080"}
    assert guard.allows({"csrf": guard.token}, here) == ""
    assert guard.allows({"csrf": guard.token}, {**here, "origin": "http://127.0.0.1:8080"}) == ""
    assert "not from this console" in guard.allows({"csrf": "stale"}, here)
    assert "not from this console" in guard.allows({}, here)
    for origin in ("http://evil.example", "null", "http://127.0.0.1:8081"):
        assert f"a form from {origin}" in guard.allows({"csrf": guard.token},
                                                       {**here, "origin": origin})
    assert FormGuard().token != guard.token, "a token per process"


def test_fleet_cells_say_online_offline_and_unknown():
    now = 1_800_000_000.0
    online = GatewayRow("a", True, now - 60, now - 5, 3, 12.0, 2**30, 7200.0, 1, "0.1.0")
    offline = GatewayRow("b", False, None, None, None, None, None, None, None, None)
    a, b = fleet_cells([online, offline], now)
    assert (a.state, a.backlog, a.oldest, a.disk, a.last_seen) == (
        "online", "3 msgs", "12 s", "1024 MiB free, full in 2 h 0 min", "5 s ago")
    assert a.uplink.startswith("online since ")
    assert (b.state, b.uplink, b.backlog, b.disk, b.version) == ("offline", "offline", "-", "-",
                                                                 "-")


def test_twin_sides_line_up_keys_and_mark_differences():
    rows = twin_sides({"$version": 2, "rate": 5, "mode": "eco"}, {"$version": 9, "rate": 4})
    assert [(r.key, r.desired, r.reported, r.differs) for r in rows] == [
        ("$version", "2", "9", False), ("mode", '"eco"', "", False), ("rate", "5", "4", True)]
    assert twin_sides(None, None) == []


def test_ledger_cells():
    assert ledger_cells(None) == {"state": "off"}
    waiting = Accounts("a", None, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert ledger_cells(waiting) == {"state": "waiting"}
    lost = Accounts("a", 10, 20, 10, 7, 0, 1, 0, 0, 0, 2, 0, 0, ((12, 13), (15, 17)))
    cells = ledger_cells(lost)
    assert cells["state"] == "judged" and cells["unaccounted"] == 2
    assert cells["unaccounted_seqs"] == "12, 15-16"
    assert ("unaccounted", 2) in cells["counts"]
