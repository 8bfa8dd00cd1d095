"""Issue 13 done-when 4: nothing on the event loop's thread makes a synced write.

The daemon turns its store's guard on before the listeners bind: from then on a synced write (or
a WAL sync) asked for on the loop's thread is refused and counted. This test drives every path
that writes durably (telemetry online and offline, twin reads and patches, a desired document,
cloud-to-device messages, a registry change, settings with a route between children, a method
call, a takeover) through a real daemon, and then reads the guard's own counter: one synced
write on the loop anywhere, and it fails. Each path must also still work, which is asserted.
"""

from __future__ import annotations

import json

from gateway.upstream.cloud_contract import gateway_twin_topic, registry_topic
from tests.support.clients import Child, new_key, publish_retained, registry_doc
from tests.support.hub_child import HubChild, Operator

TO_B = 'BrokeredEndpoint("/devices/dev-b/messages/devicebound")'


def test_every_durable_path_goes_through_the_writer(cloud, gateways):
    keys = {d: new_key() for d in ("dev-a", "dev-b")}
    publish_retained(cloud.port, registry_topic("", "edge-1"), registry_doc(1, keys))
    gw = gateways(cloud_url=cloud.url)
    gw.start()
    gw.wait_status(lambda s: s["registry_version"] == 1 and s["uplink"]["state"] == "online",
                   what="registry synced and uplink online")
    assert gw.status()["writer"]["sync_guard"] is True

    operator = Operator(cloud.port)
    a = HubChild("dev-a", keys["dev-a"], gw.plain_port)
    b = HubChild("dev-b", keys["dev-b"], gw.plain_port)
    assert a.connect() == 0 and b.connect() == 0
    a.subscribe_all()
    b.subscribe_all()

    # online: telemetry, twin, desired, C2D, a method between children
    a.wait_acked([a.send(i).mid for i in range(200)])
    assert a.patch_reported({"online": True}) == (204, 2)
    operator.put_retained("devices/dev-a/twin/desired", {"$version": 2, "mode": "eco"})
    a.wait(lambda: a.messages("$iothub/twin/PATCH/properties/desired/"), what="desired patch")
    operator.send("dev-b", b"c2d-online")
    b.wait(lambda: b.messages("devices/dev-b/messages/devicebound/"), what="C2D online")
    a.auto_subscribe = b.auto_subscribe = True

    # a registry change and settings with a route from A to B
    keys["dev-c"] = new_key()
    publish_retained(cloud.port, registry_topic("", "edge-1"), registry_doc(2, keys))
    settings = {"$version": 1, "schemaVersion": "1.0", "routes": {
        "a-to-b": f"FROM /messages/devices/dev-a/* WHERE kind = 'cmd' INTO {TO_B}",
        "up": "FROM /messages/* INTO $upstream"}}
    publish_retained(cloud.port, gateway_twin_topic("", "edge-1", "desired"),
                     json.dumps(settings).encode())
    gw.wait_status(lambda s: s["registry_version"] == 2 and s["settings_version"] == 1,
                   what="registry v2 and settings v1")

    # offline: telemetry committed, patches, routed messages, a takeover
    cloud.stop()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink down")
    a.wait_acked([a.send(i, props="kind=cmd").mid for i in range(200, 260)])
    b.wait(lambda: len(b.messages("devices/dev-b/messages/devicebound/")) == 61,
           what="60 routed messages")
    assert [a.patch_reported({"n": i})[0] for i in range(20)] == [204] * 20
    assert a.twin_get()["reported"]["n"] == 19
    c = Child("dev-c", keys["dev-c"], gw.plain_port)
    assert c.connect() == 0
    c.wait_acked([c.send(i, qos=0).mid for i in range(10)] + [c.send(10).mid])
    c.close()

    status = gw.status()
    assert status["writer"]["sync_refused_on_loop"] == 0, "a synced write on the event loop"
    assert status["writer"]["synced_writes"] >= 1
    assert gw.terminate() == 0  # the last commit and the WAL sync at shutdown: off the loop
    assert "event loop's thread" not in gw.log_text()
    for client in (a, b):
        client.close()
    operator.close()
