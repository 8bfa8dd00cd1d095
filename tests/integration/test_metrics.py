"""Prometheus metrics: off by default, on a loopback port when asked, the status numbers."""

from __future__ import annotations

import re
import urllib.request

from tests.support.broker import free_port


def test_metrics_are_off_by_default_and_served_when_configured(gateways):
    plain = gateways("plain")
    plain.start()
    assert plain.status()["metrics"] is None
    port = free_port()
    gw = gateways("metrics", metrics={"port": port})
    gw.start()
    assert gw.status()["metrics"] == f"127.0.0.1:{port}"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    for name in ("gatewayd_uplink_up 0", "gatewayd_backlog_messages 0",
                 "gatewayd_children_connected 0", "gatewayd_disk_free_bytes "):
        assert name in text, text
    assert re.search(r"^# TYPE gatewayd_messages_expired_total counter$", text, re.M)
    assert len(re.findall(r"^# HELP ", text, re.M)) == len(set(re.findall(r"^# HELP (\S+)",
                                                                         text, re.M)))
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
        raise AssertionError("only /metrics is served")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
