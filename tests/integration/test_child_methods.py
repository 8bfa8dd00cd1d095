"""Issue 4 done-when 4: a child calls a method on another child with the uplink cut; 404, 504,
and 403 for a caller the target's registry entry does not allow."""

from __future__ import annotations

import json

from gateway.upstream.cloud_contract import registry_topic
from tests.support.clients import new_key, publish_retained
from tests.support.hub_child import HubChild


def entry(device: str, key: str, callers: list[str] | None = None) -> dict:
    doc = {"deviceId": device, "status": "enabled", "auth": {"type": "sas", "primaryKey": key}}
    if callers is not None:
        doc["methodCallers"] = callers
    return doc


def test_child_to_child_methods_work_offline(cloud, gateways):
    keys = {d: new_key() for d in ("caller", "valve", "mute", "stranger")}
    registry = {"version": 1, "children": [
        entry("caller", keys["caller"]),
        entry("valve", keys["valve"], ["caller"]),
        entry("mute", keys["mute"], ["*"]),
        entry("stranger", keys["stranger"]),
    ]}
    publish_retained(cloud.port, registry_topic("", "edge-1"), json.dumps(registry).encode())
    gw = gateways(cloud_url=cloud.url)
    gw.start()
    gw.wait_status(lambda s: s["registry_version"] == 1, what="registry synced")
    cloud.stop()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink cut")

    children = {}
    for device in keys:
        child = HubChild(device, keys[device], gw.plain_port,
                         method_status=None if device == "mute" else 200)
        assert child.connect() == 0
        child.subscribe_all()
        children[device] = child

    caller = children["caller"]
    assert caller.invoke("valve", "open", {"pct": 40}) == (
        200, {"method": "open", "echo": {"pct": 40}})
    status, body = caller.invoke("ghost", "open", {})
    assert status == 404 and "not a child" in body["message"]
    status, body = caller.invoke("mute", "open", {}, timeout=0.5)
    assert status == 504 and "did not answer" in body["message"]
    status, body = children["stranger"].invoke("valve", "open", {})
    assert status == 403 and "methodCallers" in body["message"]
    children["valve"].close()
    status, _ = caller.invoke("valve", "open", {})
    assert status == 404, "a target that is not connected answers 404 at once"
    for child in children.values():
        child.close()
