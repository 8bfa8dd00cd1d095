"""A test child inside the VM, using the installed venv's paho and the gateway's SAS helper.

`child.py registry` publishes the registry to the VM's mosquitto; `child.py send N` sends N QoS 1
messages through the gateway's plain listener and waits for every PUBACK.
"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

from gateway.child.auth import make_sas_token

HUB, KEY = "hub.example.net", "c2VjcmV0LWtleS1mb3ItdGhlLXZtLXRlc3QtMTIzNDU2"


def registry() -> None:
    doc = {"version": 1, "children": [{"deviceId": "vm-child", "status": "enabled",
                                        "auth": {"type": "sas", "primaryKey": KEY}}]}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    c.publish("gateways/edge-gateway/registry", json.dumps(doc), qos=1, retain=True)\
        .wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def send(n: int) -> None:
    acked = set()
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="vm-child",
                    protocol=mqtt.MQTTv311)
    c.username_pw_set(f"{HUB}/vm-child/?api-version=2021-04-12",
                      make_sas_token(HUB, "vm-child", KEY, int(time.time()) + 3600))

    def on_publish(client, userdata, mid, rc, props):
        acked.add(mid)
        if len(acked) == n:
            done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", 1884)
    c.loop_start()
    for i in range(n):
        c.publish("devices/vm-child/messages/events/", json.dumps({"i": i}), qos=1)
    if not done.wait(60):
        sys.exit(f"only {len(acked)} of {n} PUBACKed")
    c.disconnect()
    c.loop_stop()


if __name__ == "__main__":
    registry() if sys.argv[1] == "registry" else send(int(sys.argv[2]))
