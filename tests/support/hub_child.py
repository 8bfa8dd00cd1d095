"""A paho child that also uses the IoT Hub twin, method and cloud-to-device topics, and a small
MQTT 5 operator client for the cloud side (method calls, C2D sends, retained twin documents)."""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from urllib.parse import parse_qsl

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .clients import Child

SUBSCRIPTIONS = (
    "$iothub/twin/res/#",
    "$iothub/twin/PATCH/properties/desired/#",
    "$iothub/methods/POST/#",
    "$iothub/methods/invoke/res/#",
)


class HubChild(Child):
    """Records every message the gateway sends it; answers methods with `method_status`."""

    def __init__(self, *args, method_status: int | None = 200, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._rids = itertools.count(1)
        self.method_status = method_status
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._subacks = 0
        self.auto_subscribe = False
        self._plain_on_connect = self.client.on_connect
        self.client.on_connect = self._on_connect_subscribe

    def _on_connect_subscribe(self, client, userdata, flags, reason_code, properties) -> None:
        """The gateway keeps no child sessions: subscribe again after every reconnect."""
        if self.auto_subscribe and not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self._topics()])
        self._plain_on_connect(client, userdata, flags, reason_code, properties)

    def _topics(self, devicebound: bool = True) -> list[str]:
        topics = list(SUBSCRIPTIONS)
        if devicebound:
            topics.append(f"devices/{self.device_id}/messages/devicebound/#")
        return topics

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self._subacks += 1
            self._cond.notify_all()

    def subscribe_all(self, devicebound: bool = True, timeout: float = 10.0) -> None:
        topics = self._topics(devicebound)
        with self._cond:
            want = self._subacks + 1
        self.client.subscribe([(t, 1) for t in topics])
        self.wait(lambda: self._subacks >= want, timeout, "SUBACK")

    def _on_message(self, client, userdata, message) -> None:
        if message.topic.startswith("$iothub/methods/POST/") and self.method_status is not None:
            name = message.topic.split("/")[3]
            rid = dict(parse_qsl(message.topic.split("?", 1)[1]))["$rid"]
            body = json.dumps({"method": name, "echo": json.loads(message.payload or b"null")})
            client.publish(f"$iothub/methods/res/{self.method_status}/?$rid={rid}", body, qos=1)
        with self._cond:
            self.received.append((message.topic, message.payload))
            self._cond.notify_all()

    def wait(self, predicate, timeout: float = 20.0, what: str = "a message") -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"{self.device_id}: timed out waiting for {what}")

    def messages(self, prefix: str) -> list[tuple[str, bytes]]:
        with self._cond:
            return [(t, p) for t, p in self.received if t.startswith(prefix)]

    def _request(self, topic: str, payload: bytes, rid: str) -> tuple[int, str, bytes]:
        marker = f"$rid={rid}"
        self.client.publish(topic, payload, qos=1)
        found: list = []

        def answered() -> bool:
            found[:] = [(t, p) for t, p in self.received
                        if t.startswith("$iothub/twin/res/") and marker in t.split("?", 1)[1]
                        .split("&")]
            return bool(found)

        self.wait(answered, what=f"twin response {rid}")
        topic, body = found[0]
        return int(topic.split("/")[3]), topic, body

    def twin_get(self) -> dict:
        rid = str(next(self._rids)) + uuid.uuid4().hex[:6]
        status, _, body = self._request(f"$iothub/twin/GET/?$rid={rid}", b"", rid)
        assert status == 200, status
        return json.loads(body)

    def patch_reported(self, patch: dict) -> tuple[int, int | None]:
        """(status, new reported version or None)."""
        rid = str(next(self._rids)) + uuid.uuid4().hex[:6]
        topic = f"$iothub/twin/PATCH/properties/reported/?$rid={rid}"
        status, answer, _ = self._request(topic, json.dumps(patch).encode(), rid)
        query = dict(parse_qsl(answer.split("?", 1)[1]))
        return status, int(query["$version"]) if "$version" in query else None


    def invoke(self, target: str, method: str, payload: dict,
               timeout: float | None = None) -> tuple[int, dict]:
        """gatewayd's child-to-child method call; (status, answer payload)."""
        rid = uuid.uuid4().hex[:10]
        query = f"$rid={rid}" + (f"&timeout={timeout}" if timeout is not None else "")
        self.client.publish(f"$iothub/methods/invoke/{target}/{method}/?{query}",
                            json.dumps(payload), qos=1)
        found: list = []

        def answered() -> bool:
            found[:] = [(t, p) for t, p in self.received
                        if t.startswith("$iothub/methods/invoke/res/") and t.endswith(rid)]
            return bool(found)

        self.wait(answered, what=f"method answer {rid}")
        topic, body = found[0]
        return int(topic.split("/")[4]), json.loads(body)


class Operator:
    """The cloud side: an MQTT 5 client at the cloud broker, as an operator's tool would be."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=f"operator-{uuid.uuid4().hex[:8]}")
        self.answers: dict[bytes, tuple[int, bytes]] = {}
        self.retained: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.reply_topic = f"operators/{uuid.uuid4().hex[:8]}/res"
        self.subscribe(self.reply_topic)

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        if not self._subscribed.wait(10):
            raise AssertionError(f"operator could not subscribe to {topic}")

    def _on_message(self, client, userdata, message) -> None:
        props = message.properties
        with self._cond:
            if message.topic == self.reply_topic:
                status = int(dict(getattr(props, "UserProperty", []) or [])["status"])
                self.answers[props.CorrelationData] = (status, message.payload)
            else:
                self.retained[message.topic] = message.payload
            self._cond.notify_all()

    def wait(self, predicate, timeout: float = 20.0, what: str = "an answer") -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"operator: timed out waiting for {what}")

    def invoke(self, device: str, method: str, payload: dict, timeout: float | None = None,
               wait: float = 20.0) -> tuple[int, dict]:
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = correlation
        if timeout is not None:
            props.UserProperty = [("timeout", str(timeout))]
        self.client.publish(f"devices/{device}/methods/{method}", json.dumps(payload), qos=1,
                            properties=props).wait_for_publish(10)
        self.wait(lambda: correlation in self.answers, wait, f"method {method} answer")
        status, body = self.answers[correlation]
        return status, json.loads(body)

    def send(self, device: str, payload: bytes, properties: list[tuple[str, str]] = (),
             ttl: int | None = None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if properties:
            props.UserProperty = list(properties)
        if ttl is not None:
            props.MessageExpiryInterval = ttl
        self.client.publish(f"devices/{device}/messages/devicebound", payload, qos=1,
                            properties=props).wait_for_publish(10)

    def put_retained(self, topic: str, doc: dict) -> None:
        self.client.publish(topic, json.dumps(doc), qos=1, retain=True).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
