"""Real paho-mqtt clients: children speaking the IoT Hub dialect, and the cloud-side verifier."""

from __future__ import annotations

import base64
import json
import os
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.child.auth import make_sas_token

from .gatewayd import HUB

_V311_CONNACK = {132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def registry_doc(version: int, children: dict[str, str], **extra: dict) -> bytes:
    """A registry of SAS children {device_id: primary key}; `extra` adds raw entries."""
    entries = [
        {"deviceId": d, "status": "enabled", "auth": {"type": "sas", "primaryKey": k}}
        for d, k in children.items()
    ]
    entries += list(extra.values())
    return json.dumps({"version": version, "children": entries}).encode()


def publish_retained(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


class Child:
    """One child device: paho with its own thread, auto-reconnect, QoS 1 resend on reconnect."""

    def __init__(self, device_id: str, key: str | None, port: int, *,
                 password: str | None = None, client_id: str | None = None,
                 tls_ca: str | None = None, cert: tuple[str, str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.device_id = device_id
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or device_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        if password is None and key is not None:
            password = make_sas_token(HUB, device_id, key, int(time.time()) + 3600)
        self.client.username_pw_set(f"{HUB}/{device_id}/?api-version=2021-04-12", password)
        if tls_ca:
            ctx = ssl.create_default_context(cafile=tls_ca)
            if cert:
                ctx.load_cert_chain(*cert)
            self.client.tls_set_context(ctx)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.max_inflight_messages_set(20)
        self.connack = threading.Event()
        self.rc: int | None = None
        self.disconnects = 0
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.acked: set[int] = set()
        self._acked_changed = threading.Condition()
        self.port, self.host = port, host

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acked_changed:
            self.acked.add(mid)
            self._acked_changed.notify_all()

    def wait_acked(self, mids: list[int], timeout: float = 60.0) -> None:
        """Wait for the gateway's PUBACK of every mid (paho re-sends across reconnects)."""
        want = set(mids)
        with self._acked_changed:
            if not self._acked_changed.wait_for(lambda: want <= self.acked, timeout):
                missing = len(want - self.acked)
                raise AssertionError(f"{self.device_id}: {missing} messages never PUBACKed")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        # paho 2 reports MQTT 3.1.1 CONNACK codes as MQTT 5 reason codes; map them back
        self.rc = _V311_CONNACK.get(reason_code.value, reason_code.value)
        self.connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnects += 1

    def connect(self, timeout: float = 10.0) -> int:
        """Connect and return the CONNACK code (0 accepted, 4/5 refused)."""
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connack.wait(timeout):
            raise AssertionError(f"{self.device_id}: no CONNACK")
        return self.rc

    def send(self, i: int, qos: int = 1, props: str = "", size: int = 0) -> mqtt.MQTTMessageInfo:
        """Publish message `i` as JSON, padded to about `size` bytes when asked."""
        body = {"device": self.device_id, "i": i}
        if size:
            body["pad"] = "x" * max(0, size - len(json.dumps(body)) - 10)
        payload = json.dumps(body).encode()
        topic = f"devices/{self.device_id}/messages/events/{props}"
        return self.client.publish(topic, payload, qos=qos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Received:
    device: str
    i: int
    seq: int
    gw: str
    enq: int
    props: dict
    expiry: int | None


@dataclass
class CloudVerifier:
    """Subscribes at the cloud broker with a persistent session and records every delivery."""

    port: int
    topic: str = "devices/+/messages/events"
    client_id: str = field(default_factory=lambda: f"verifier-{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        self.messages: list[Received] = []
        self.raw: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(0.05, 0.5)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(self.topic, qos=1)

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise AssertionError("verifier could not subscribe")

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.subscribed.clear()

    def _on_message(self, client, userdata, message) -> None:
        """Every delivery goes to `raw`; those that are test telemetry (a JSON body with
        `device` and `i`) also to `messages`, so one verifier can watch documents too."""
        props = dict(getattr(message.properties, "UserProperty", []) or [])
        try:
            body = json.loads(message.payload)
            rec = Received(
                body["device"], body["i"], int(props.get("seq", -1)), props.get("gw", ""),
                int(props.get("enq", -1)), props,
                getattr(message.properties, "MessageExpiryInterval", None),
            )
        except (ValueError, KeyError, TypeError):
            rec = None
        with self._changed:
            self.raw.append(message)
            if rec is not None:
                self.messages.append(rec)
            self._changed.notify_all()

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "messages") -> None:
        """Wait until `predicate(messages)` holds.

        The predicate runs on a copy, outside the lock: run under it once per message, on tens
        of thousands of them, it held up the paho thread that delivers, and a drain outlasted
        its deadline on a loaded machine. A few new messages are judged one by one (so that
        `len(m) == 1` cannot be stepped over); a burst is judged as a whole, at most 20 times
        a second.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            snapshot = list(self.messages)
        if predicate(snapshot):
            return
        judged = len(snapshot)
        while True:
            with self._changed:
                self._changed.wait_for(lambda: len(self.messages) > judged,  # noqa: B023
                                       max(0.0, deadline - time.monotonic()))
                snapshot = list(self.messages)
            first = judged + 1 if len(snapshot) - judged <= 16 else len(snapshot)
            if any(predicate(snapshot[:n]) for n in range(first, len(snapshot) + 1)):
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out waiting for {what}: have {len(snapshot)}")
            if len(snapshot) - judged > 16:
                time.sleep(0.05)  # a burst: let more gather rather than judge it per message
            judged = len(snapshot)

    def distinct(self) -> set[tuple[str, int]]:
        with self._lock:
            return {(m.device, m.i) for m in self.messages}
