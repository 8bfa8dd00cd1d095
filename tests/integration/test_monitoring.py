"""Issue 17: the Grafana dashboard and the Prometheus alert rules shipped in the .deb are valid
(`promtool check rules`), and every metric they use is one a real gatewayd exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support.broker import free_port

MONITORING = Path(__file__).resolve().parents[2] / "debian" / "monitoring"
RULES = MONITORING / "gatewayd-alerts.yml"
DASHBOARD = MONITORING / "gatewayd-dashboard.json"
METRIC = re.compile(r"\bgatewayd_[a-z_]+\b")


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run ./dev.sh test, which installs prometheus")
    return found


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


def _rule_exprs() -> list[str]:
    return re.findall(r"^\s+expr:\s*(.+)$", RULES.read_text(), re.M)


def test_promtool_accepts_the_alert_rules_and_each_alert_the_issue_asks_for_is_there():
    done = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = set(re.findall(r"^\s+- alert:\s*(\S+)$", RULES.read_text(), re.M))
    assert {"GatewaydUplinkDown", "GatewaydBacklogPastHalfTtl", "GatewaydDiskFullWithin24h",
            "GatewaydDeadLetters", "GatewaydChildRefusalSpike", "GatewaydModuleFlapping",
            "GatewaydChildFlapping"} <= alerts


def test_the_dashboard_is_grafana_json_with_a_query_per_panel():
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] and doc["title"]
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in doc["panels"])
    assert {v["name"] for v in doc["templating"]["list"]} == {"datasource", "instance"}


def test_every_metric_in_the_dashboard_and_the_rules_is_exported_by_gatewayd(cloud, gateways):
    used = {name for expr in _dashboard_exprs() + _rule_exprs()
            for name in METRIC.findall(expr)}
    assert len(used) >= 15, used
    port = free_port()
    gw = gateways(cloud_url=cloud.url, metrics={"port": port})
    gw.start()
    gw.wait_status(lambda s: s["uplink"]["state"] == "online", what="uplink online")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert used <= exported, f"not exported by gatewayd: {sorted(used - exported)}"
