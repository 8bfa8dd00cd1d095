"""Issue 4 done-when 4: a child calls a method on another child with the uplink cut; 404, 504,
and 403 for a caller the target's registry entry does not allow."""

from __future__ import annotations

import json

from tests.support.clients import new_key
from tests.support.hub_child import HubChild
from tests.support.synced import synced_gateway


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
    gw = synced_gateway(cloud, gateways, registry=json.dumps(registry).encode())
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
