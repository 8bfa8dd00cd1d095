"""Issue 6: auth.offline_trust_secs limits how long cached credentials are accepted without the
cloud; every offline authentication (accepted or refused) is published to the cloud's audit
topic when the link returns."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.upstream.cloud_contract import audit_topic
from tests.support.clients import Child, new_key
from tests.support.synced import synced_gateway
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import wait_until


def connack(gw, device: str, key: str) -> int:
    child = Child(device, key, gw.plain_port)
    child.client.reconnect_delay_set(30, 60)
    code = child.connect()
    child.close()
    return code


def persistent_subscriber(port: int, topic: str, into: list):
    """An MQTT 5 subscriber whose session the broker keeps across the outage."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="audit-reader",
                         protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: into.extend(json.loads(m.payload))
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.reconnect_delay_set(0.05, 0.5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    return client


def test_cached_credentials_expire_offline_and_the_audit_reaches_the_cloud(cloud, gateways):
    key = new_key()
    gw = synced_gateway(cloud, gateways, {"d": key}, online=True, auth={"offline_trust_secs": 3})
    assert connack(gw, "d", key) == 0 and gw.status()["audit_pending"] == 0, "online: no audit"
    cloud.stop()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink cut")
    assert connack(gw, "d", key) == 0, "within the trust window"
    wait_until(lambda: connack(gw, "d", key), lambda code: code != 0, timeout=30, interval=0.2,
               what="cached credentials refused once the window runs out (real time)")
    status = gw.status()
    assert "auth.offline_trust_secs" in status["offline_trust"]["expired"]
    assert connack(gw, "d", "c2VjcmV0LXdyb25nLWtleS0xMjM0NTY3ODkw") == 5
    pending = status["audit_pending"]
    assert pending >= 2

    cloud.start()
    gw.wait_status(lambda s: s["audit_pending"] == 0 and s["uplink"]["state"] == "online",
                   what="the audit published")
    assert connack(gw, "d", key) == 0, "a sync makes the cache trusted again"
    print(f"offline trust 3 s: {pending} offline decisions audited")


def test_audit_entries_say_who_and_why(cloud, gateways):
    key = new_key()
    received: list = []
    reader = persistent_subscriber(cloud.port, audit_topic("", "edge-1"), received)
    proxy = TcpProxy(cloud.port)  # the link is cut here; the broker and the reader stay up
    gw = synced_gateway(cloud, gateways, {"d": key}, online=True, cloud_url=proxy.url)
    proxy.down()
    proxy.cut()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink cut")
    assert connack(gw, "d", key) == 0
    assert connack(gw, "intruder", key) == 5
    proxy.up()
    gw.wait_status(lambda s: s["audit_pending"] == 0 and s["uplink"]["state"] == "online",
                   what="published")
    wait_until(lambda: len(received), lambda n: n >= 2, timeout=20,
               what="both audit entries at the cloud")
    by_device = {e["deviceId"]: e for e in received}
    assert by_device["d"]["accepted"] is True and by_device["d"]["method"] == "cache"
    assert by_device["intruder"]["accepted"] is False and by_device["intruder"]["reason"]
    reader.disconnect()
    reader.loop_stop()
    proxy.close()
