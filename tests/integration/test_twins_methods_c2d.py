"""Issue 3 done-when 1, 2, 3 and 5: twins offline and across SIGKILL, cloud-to-device messages,
direct methods, and the gateway's own settings twin — real mosquitto, real daemon, paho children.
"""

from __future__ import annotations

import json

import pytest

from gateway.upstream.cloud_contract import gateway_twin_topic
from tests.support.clients import CloudVerifier, new_key
from tests.support.hub_child import HubChild, Operator
from tests.support.synced import synced_gateway
from tests.support.wait import wait_until


def start_gateway(cloud, gateways, children: dict[str, str]):
    return synced_gateway(cloud, gateways, children, online=True)


def connect_child(gw, device: str, key: str, **kwargs) -> HubChild:
    child = HubChild(device, key, gw.plain_port, **kwargs)
    assert child.connect() == 0
    child.subscribe_all()
    child.auto_subscribe = True
    return child


def test_offline_twin_patches_survive_sigkill_and_reconcile(cloud, gateways):
    key = new_key()
    operator = Operator(cloud.port)
    operator.put_retained("devices/dev-a/twin/desired", {"$version": 1, "mode": "eco"})
    gw = start_gateway(cloud, gateways, {"dev-a": key})
    child = connect_child(gw, "dev-a", key)
    # the child may ask before the gateway has fetched the cloud's document: version 1 is also
    # the empty twin's version, so wait for the content
    twin = wait_until(child.twin_get, lambda t: t["desired"].get("mode") == "eco", timeout=20,
                      what="desired v1")
    assert twin["desired"]["$version"] == 1
    assert twin["reported"] == {"$version": 1}

    cloud.stop()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink down")
    assert child.patch_reported({"temp": 20.5, "fw": {"major": 1, "minor": 2}}) == (204, 2)
    versions = [child.patch_reported({"counter": i})[1] for i in range(48)]
    assert versions == list(range(3, 51)), "each patch bumps the version by one"
    assert child.patch_reported({"temp": None, "fw": {"minor": 3}}) == (204, 51)
    assert child.patch_reported({"$bad": 1})[0] == 400
    assert child.patch_reported({"counter": 49}) == (204, 52)
    offline_view = child.twin_get()
    assert offline_view["reported"] == {"$version": 52, "counter": 49,
                                        "fw": {"major": 1, "minor": 3}}

    gw.kill()
    cloud.start()
    operator = Operator(cloud.port)
    operator.subscribe("devices/dev-a/twin/reported")
    operator.put_retained("devices/dev-a/twin/desired", {"$version": 2, "mode": "boost"})
    gw.start()

    operator.wait(lambda: json.loads(operator.retained.get("devices/dev-a/twin/reported", b"{}"))
                  .get("$version") == 52, what="the latest reported state in the cloud")
    in_cloud = json.loads(operator.retained["devices/dev-a/twin/reported"])
    assert in_cloud == offline_view["reported"]
    twin = wait_until(child.twin_get, lambda t: t["desired"]["$version"] == 2, timeout=20,
                      what="desired v2")
    assert twin["desired"] == {"$version": 2, "mode": "boost"}
    assert twin["reported"]["$version"] == 52, "versions only move forward"
    gw.wait_status(lambda s: s["uplink"]["state"] == "online", what="uplink back")
    child.close()
    operator.close()


def test_desired_patch_is_pushed_to_a_connected_child(cloud, gateways):
    key = new_key()
    gw = start_gateway(cloud, gateways, {"dev-p": key})
    child = connect_child(gw, "dev-p", key)
    operator = Operator(cloud.port)
    operator.put_retained("devices/dev-p/twin/desired", {"$version": 3, "rate": 5, "mode": "x"})
    child.wait(lambda: child.messages("$iothub/twin/PATCH/properties/desired/"), what="patch 3")
    operator.put_retained("devices/dev-p/twin/desired", {"$version": 4, "rate": 10})
    child.wait(lambda: len(child.messages("$iothub/twin/PATCH/properties/desired/")) == 2,
               what="patch 4")
    (t1, p1), (t2, p2) = child.messages("$iothub/twin/PATCH/properties/desired/")
    assert t1.endswith("?$version=3") and json.loads(p1) == {"$version": 3, "rate": 5, "mode": "x"}
    assert t2.endswith("?$version=4")
    assert json.loads(p2) == {"$version": 4, "rate": 10, "mode": None}
    operator.put_retained("devices/dev-p/twin/desired", {"$version": 2, "rate": 1})
    # the gateway handles cloud messages in order, one at a time: once a message sent after the
    # stale document reaches the child, that document has been judged
    operator.send("dev-p", b"after version 2")
    child.wait(lambda: child.messages("devices/dev-p/messages/devicebound/"),
               what="the message sent after version 2")
    assert child.twin_get()["desired"]["$version"] == 4, "older is ignored"
    child.close()
    operator.close()


@pytest.mark.packet_log
def test_cloud_to_device_waits_for_the_child_survives_sigkill_and_expires(cloud, gateways):
    key = new_key()
    gw = start_gateway(cloud, gateways, {"dev-b": key})
    operator = Operator(cloud.port)
    operator.send("dev-b", b"first", [("colour", "blue green"), ("$.mid", "m-1")])
    operator.send("dev-b", b"short-lived", ttl=1)
    operator.send("dev-b", b"second")
    gw.wait_status(lambda s: s["hub"]["devicebound_waiting"] + s["hub"]["devicebound_expired"]
                   == 3, what="three stored")
    # the PUBACKs leave a moment after the commit: killed before they reach the broker, the
    # gateway is sent those messages again (at least once), and the child would get one twice
    wait_until(lambda: cloud.qos1_exchange(gw.gateway_id), lambda n: n[0] >= 3 and n[0] == n[1],
               timeout=10, what="the cloud broker to have the gateway's PUBACKs (sent, acked)")
    gw.kill()
    gw.start()
    gw.wait_status(lambda s: s["hub"]["devicebound_expired"] == 1, what="the 1 s message expired")

    child = connect_child(gw, "dev-b", key)
    child.wait(lambda: len(child.messages("devices/dev-b/messages/devicebound/")) == 2,
               what="two C2D messages")
    got = child.messages("devices/dev-b/messages/devicebound/")
    assert [p for _, p in got] == [b"first", b"second"]
    assert "colour=blue%20green" in got[0][0] and "$.mid=m-1" in got[0][0]
    gw.wait_status(lambda s: s["hub"]["devicebound_waiting"] == 0, what="PUBACKs remove them")

    operator.send("dev-b", b"live")
    child.wait(lambda: len(child.messages("devices/dev-b/messages/devicebound/")) == 3,
               what="a live C2D message")
    child.close()
    operator.close()


def test_direct_methods_round_trip_404_and_504(cloud, gateways):
    keys = {d: new_key() for d in ("dev-c", "dev-d", "dev-e")}
    gw = start_gateway(cloud, gateways, keys)
    answering = connect_child(gw, "dev-c", keys["dev-c"])
    silent = connect_child(gw, "dev-e", keys["dev-e"], method_status=None)
    operator = Operator(cloud.port)

    status, body = operator.invoke("dev-c", "reboot", {"delay": 3})
    assert (status, body) == (200, {"method": "reboot", "echo": {"delay": 3}})
    status, body = operator.invoke("dev-d", "reboot", {})
    assert status == 404 and "not connected" in body["message"]
    status, body = operator.invoke("dev-e", "reboot", {}, timeout=1)
    assert status == 504 and "did not answer" in body["message"]
    assert gw.status()["hub"]["methods_timed_out"] == 1
    answering.close()
    silent.close()
    operator.close()


def test_time_to_live_from_the_gateway_twin_applies_to_new_messages(cloud, gateways):
    key = new_key()
    gw = start_gateway(cloud, gateways, {"dev-t": key})
    operator = Operator(cloud.port)
    reported_topic = gateway_twin_topic("", "edge-1", "reported")
    operator.subscribe(reported_topic)
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    child = connect_child(gw, "dev-t", key)

    child.wait_acked([child.send(0).mid])
    verifier.wait_for(lambda m: len(m) == 1)
    assert verifier.messages[0].expiry > 7000, "the config file's 7200 s before any twin"

    desired = {"$version": 1, "schemaVersion": "1.0", "routes": {},
               "storeAndForwardConfiguration": {"timeToLiveSecs": 120}}
    operator.put_retained(gateway_twin_topic("", "edge-1", "desired"), desired)
    gw.wait_status(lambda s: s["time_to_live_secs"] == 120, what="ttl 120 applied")
    operator.wait(lambda: json.loads(operator.retained.get(reported_topic, b"{}"))
                  .get("lastDesiredVersion") == 1, what="reported twin with version 1")
    reported = json.loads(operator.retained[reported_topic])
    assert reported["storeAndForwardConfiguration"] == {"timeToLiveSecs": 120}
    assert reported["registry"]["version"] == 1 and reported["uplink"]["state"] == "online"
    assert set(reported["backlog"]) == {"messages", "bytes", "oldestAgeSecs"}

    child.wait_acked([child.send(1).mid])
    verifier.wait_for(lambda m: len(m) == 2)
    assert 100 < verifier.messages[1].expiry <= 120

    bad = dict(desired, **{"$version": 2, "storeAndForwardConfiguration": {"timeToLiveSecs": 0}})
    operator.put_retained(gateway_twin_topic("", "edge-1", "desired"), bad)
    operator.wait(lambda: json.loads(operator.retained[reported_topic]).get("lastDesiredRefusal"),
                  what="the refusal in the reported twin")
    reported = json.loads(operator.retained[reported_topic])
    assert "timeToLiveSecs" in reported["lastDesiredRefusal"]
    assert reported["lastDesiredVersion"] == 1
    assert gw.status()["time_to_live_secs"] == 120, "the previous settings stay"
    child.close()
    verifier.disconnect()
    operator.close()
