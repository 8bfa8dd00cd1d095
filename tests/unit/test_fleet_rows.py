"""The fleet view's rows from retained documents, and their order: worst first."""

from __future__ import annotations

import json

from gateway.operator import GatewayRow, gateway_row, worst_first
from gateway.operator.fleet import rows_from_documents


def _row(gw: str, **kw) -> GatewayRow:
    base = dict(gateway=gw, online=True, since=1000.0, last_seen=2000.0, backlog_messages=0,
                oldest_age_secs=None, disk_free_bytes=2**30, disk_full_secs=None,
                dead_letters=0, version="0.1.0")
    return GatewayRow(**{**base, **kw})


def test_a_row_takes_the_status_and_the_reported_twin():
    twin = {"backlog": {"messages": 12, "oldestAgeSecs": 30.5}, "deadLetters": 2,
            "disk": {"freeBytes": 5 * 2**20, "fullInSecs": 3600}, "softwareVersion": "0.1.0",
            "reportedAt": "2026-12-01T12:00:00Z"}
    row = gateway_row("edge-1", {"state": "online", "since": 1796126000}, twin)
    assert row == GatewayRow("edge-1", True, 1796126000.0, 1796126400.0, 12, 30.5, 5 * 2**20,
                             3600.0, 2, "0.1.0")


def test_a_last_will_is_offline_with_no_since_and_the_twin_says_when_it_was_last_seen():
    row = gateway_row("edge-2", {"state": "offline"}, {"reportedAt": "2026-12-01T12:00:00Z"})
    assert not row.online and row.since is None
    assert row.last_seen == 1796126400.0


def test_documents_that_are_not_json_or_missing_give_dashes_not_errors():
    docs = {"gateways/a/status": b"not json", "gateways/b/twin/reported": b"[1]",
            "gateways/c/registry": b"{}", "other/x/status": b"{}"}
    rows = rows_from_documents("", docs)
    assert [r.gateway for r in rows] == ["a", "b"]
    assert all(not r.online and r.backlog_messages is None and r.version is None for r in rows)


def test_prefixed_documents_are_read_under_their_prefix():
    docs = {"plant-7/gateways/edge-1/status": json.dumps({"state": "online"}).encode()}
    assert [r.gateway for r in rows_from_documents("plant-7/", docs)] == ["edge-1"]


def test_worst_first_offline_longest_silent_then_backlog_age_then_disk_then_dead_letters():
    rows = [
        _row("healthy"),
        _row("old-backlog", oldest_age_secs=900.0),
        _row("disk", disk_full_secs=7200.0),
        _row("dlq", dead_letters=5),
        _row("down-recent", online=False, last_seen=1900.0),
        _row("down-long", online=False, last_seen=100.0),
        _row("never-seen", online=False, last_seen=None),
    ]
    order = [r.gateway for r in worst_first(rows)]
    assert order == ["down-long", "down-recent", "never-seen", "old-backlog", "disk", "dlq",
                     "healthy"]
