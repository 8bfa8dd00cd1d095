"""Issue 14, done-when 4 through the daemon: the deployment arrives from the cloud, a module
that crashes is restarted by its policy, a bad document is refused with its reason in the
agent's reported document while the modules in force run on, and a gateway restarted offline
runs its last deployment from the cache."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from gateway.upstream.cloud_contract import agent_topic
from tests.support.clients import CloudVerifier, publish_retained
from tests.support.synced import synced_gateway
from tests.support.wait import wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


def modules(status: dict) -> dict:
    return (status.get("modules") or {}).get("modules", {})


def doc(version: int, **entries: dict) -> bytes:
    return json.dumps({"version": version, "modules": entries}).encode()


def module(command: list[str], policy: str = "always", **extra) -> dict:
    return {"type": "process", "status": "running", "restartPolicy": policy,
            "settings": {"command": command}, **extra}


def test_policies_refusals_and_the_cached_deployment(cloud, gateways, tmp_path):
    desired = agent_topic("", "edge-1", "desired")
    publish_retained(cloud.port, desired, doc(1, keep=module(SLEEPER),
                                              crash=module(CRASHER, "on-failure"),
                                              once=module(CRASHER, "never")))
    reported = CloudVerifier(cloud.port, topic=agent_topic("", "edge-1", "reported"))
    reported.connect()
    gw = synced_gateway(
        cloud, gateways, {}, online=True,
        modules={"workload_socket": str(Path(tempfile.mkdtemp(dir="/tmp")) / "w.sock"),
                 "runner": "process", "restart_backoff_secs": 0.05},
        until=lambda s: (modules(s).get("keep", {}).get("runtimeStatus") == "running"
                         and modules(s).get("crash", {}).get("restartCount", 0) >= 3
                         and modules(s).get("once", {}).get("runtimeStatus") == "failed"))
    s = modules(gw.status())
    assert s["crash"]["exitCode"] == 3 and s["crash"]["runtimeStatus"] in ("backoff", "running")
    assert s["once"]["restartCount"] == 0 and s["once"]["exitCode"] == 3
    keep_started = s["keep"]["lastStartTimeUtc"]

    publish_retained(cloud.port, desired, json.dumps(
        {"version": 2, "modules": {"keep": {"type": "docker"}}}).encode())
    gw.wait_log("modules.keep.type")

    def last_report(raw) -> dict:
        return json.loads(raw[-1].payload) if raw else {}

    wait_until(lambda: last_report(list(reported.raw)),
               lambda r: r.get("lastDesiredStatus", {}).get("code") == 400,
               what="the refusal in agent/reported")
    refusal = last_report(reported.raw)
    assert "modules.keep.type" in refusal["lastDesiredStatus"]["description"]
    assert refusal["deploymentVersion"] == 1
    after = modules(gw.status())["keep"]
    assert after["runtimeStatus"] == "running" and after["lastStartTimeUtc"] == keep_started

    publish_retained(cloud.port, desired, doc(3, keep=module(SLEEPER)))
    gw.wait_status(lambda st: st["modules"]["deployment_version"] == 3
                   and set(modules(st)) == {"keep"}, what="version 3 in force")
    cloud.stop()
    gw.kill()
    gw.start()  # offline: the cached deployment runs
    st = gw.wait_status(lambda st: modules(st).get("keep", {}).get("runtimeStatus") == "running",
                        what="the cached deployment running offline")
    assert st["uplink"]["state"] != "online"
    assert st["modules"]["deployment_version"] == 3 and set(modules(st)) == {"keep"}
