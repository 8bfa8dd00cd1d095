"""One MQTT 5 connection to the cloud broker: retained reads and writes, methods, C2D.

Here the cloud is an MQTT broker, so every operator job is retained documents and MQTT 5
request/response on the topics of docs/cloud-contract.md.
"""

from __future__ import annotations

import json
import ssl
import threading
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.operator.errors import CloudUnavailable, OperatorError, OperatorUsageError
from gateway.operator.registry import empty_registry
from gateway.upstream import cloud_contract as contract


@dataclass(frozen=True)
class CloudTarget:
    """Where the cloud broker is and how to log in; `prefix` is the topic prefix."""

    host: str
    port: int
    tls: bool = False
    prefix: str = ""
    username: str = ""
    password: str = ""
    ca_file: str | None = None

    @staticmethod
    def from_url(url: str, **kwargs) -> CloudTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise OperatorUsageError(
                f"--cloud: expected mqtt://host[:port] or mqtts://host[:port], got {url!r}")
        tls = parts.scheme == "mqtts"
        return CloudTarget(parts.hostname, parts.port or (8883 if tls else 1883), tls, **kwargs)


class _Collector:
    """The messages one read or one method call waits for, kept apart from every other's, so
    that one session serves many callers at once (the console's pages and its actions)."""

    def __init__(self, filters: list[str], on_live=None) -> None:
        self.filters = filters
        self.messages: list[mqtt.MQTTMessage] = []
        self.on_live = on_live  # a stream's: on_live(topic, payload, user_properties)

    def wants(self, topic: str) -> bool:
        return any(mqtt.topic_matches_sub(f, topic) for f in self.filters)


class CloudSession:
    """One MQTT 5 connection to the cloud broker, with paho's thread.

    It holds no documents between calls: every read subscribes, takes what the broker retains
    and unsubscribes, so a long-lived session (the console's) sees what a fresh one would, and
    callers on several threads may share it.
    """

    def __init__(self, target: CloudTarget, timeout: float = 10.0,
                 session_expiry: int = 0) -> None:
        """`session_expiry` > 0 keeps the broker's session (subscriptions, queued messages)
        that long across a lost connection, which paho then resumes: for `stream`."""
        self.target = target
        self.prefix = target.prefix
        self.timeout = timeout
        self._cond = threading.Condition()
        self._collectors: list[_Collector] = []
        self._subacks: set[int] = set()
        self._connack: int | None = None
        self.client_id = f"gatewayctl-{uuid.uuid4().hex[:10]}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv5)
        if target.tls:
            ctx = ssl.create_default_context(cafile=target.ca_file or None)
            self.client.tls_set_context(ctx)
        if target.username:
            self.client.username_pw_set(target.username, target.password or None)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        where = f"{target.host}:{target.port}"
        self._session_expiry = session_expiry
        props = None
        if session_expiry:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
            self.client.reconnect_delay_set(0.1, 2)
        try:
            # clean start false from the first CONNECT (a fresh client id has no old session):
            # mosquitto 2.0 does not keep a clean-start session across its own restart
            self.client.connect(target.host, target.port, keepalive=30, properties=props,
                                clean_start=not session_expiry)
        except (OSError, ssl.SSLError) as exc:
            raise CloudUnavailable(f"cannot reach the cloud broker at {where}: {exc}") from None
        self.client.loop_start()
        if not self._wait(lambda: self._connack is not None):
            self.close()
            raise CloudUnavailable(f"no answer from the cloud broker at {where}")
        if self._connack != 0:
            self.close()
            code = mqtt.ReasonCode(PacketTypes.CONNACK, identifier=self._connack)
            raise CloudUnavailable(f"the cloud broker at {where} refused the connection ({code}); "
                                   f"check --username/--password")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._connack = reason_code.value
            self._cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        streams = []
        with self._cond:
            for collector in self._collectors:
                if not collector.wants(message.topic):
                    continue
                if collector.on_live is None:
                    collector.messages.append(message)
                elif not message.retain:
                    streams.append(collector.on_live)
            self._cond.notify_all()
        if streams:
            props = getattr(message.properties, "UserProperty", None) or []
            for on_live in streams:
                on_live(message.topic, message.payload, props)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self._subacks.add(mid)
            self._cond.notify_all()

    def _wait(self, predicate, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout or self.timeout)

    def _collect(self, filters: list[str], on_live=None) -> _Collector:
        """Subscribe to `filters` for one caller; its messages from now on are its own."""
        collector = _Collector(filters, on_live)
        with self._cond:
            self._collectors.append(collector)
        result, mid = self.client.subscribe([(f, 1) for f in filters])
        if result != mqtt.MQTT_ERR_SUCCESS or not self._wait(lambda: mid in self._subacks):
            self._release(collector)
            raise CloudUnavailable("the cloud broker did not answer a SUBSCRIBE")
        with self._cond:
            self._subacks.discard(mid)
        return collector

    def _release(self, collector: _Collector) -> None:
        with self._cond:
            if collector in self._collectors:
                self._collectors.remove(collector)
            still = {f for c in self._collectors for f in c.filters}
        gone = [f for f in collector.filters if f not in still]
        if gone:
            self.client.unsubscribe(gone)

    def read_retained(self, filters: list[str]) -> dict[str, bytes]:
        """Every retained document under the filters: a probe published after the SUBSCRIBE
        comes back after the retained messages, so its arrival ends the read (no fixed wait)."""
        probe = f"{self.prefix}operators/{self.client_id}/probe/{uuid.uuid4().hex}"
        collector = self._collect([*filters, probe])
        try:
            token = uuid.uuid4().bytes
            self.client.publish(probe, token, qos=1)
            if not self._wait(lambda: any(m.topic == probe and m.payload == token
                                          for m in collector.messages)):
                raise CloudUnavailable("the cloud broker did not deliver the read probe")
            with self._cond:
                got = {m.topic: m.payload for m in collector.messages
                       if m.topic != probe and m.retain}
        finally:
            self._release(collector)
        return {t: p for t, p in got.items() if p}

    def read_json(self, topic: str) -> dict | None:
        raw = self.read_retained([topic]).get(topic)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise OperatorError(
                f"{topic} holds a document that is not JSON; fix or delete it"
            ) from None
        return doc if isinstance(doc, dict) else None

    def stream(self, filters: list[str], on_message) -> None:
        """Subscribe and hand every live (not retained) message to `on_message(topic, payload,
        user_properties)`, on paho's thread, until the session closes: for commands that keep
        counting (`gatewayctl verify`)."""
        self._collect(filters, on_message)  # never released: it lasts as long as the session

    def put_retained(self, topic: str, doc: dict) -> None:
        self._connected()
        info = self.client.publish(topic, json.dumps(doc), qos=1, retain=True)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise CloudUnavailable(f"the cloud broker did not acknowledge {topic}")

    def gateways(self) -> tuple[dict[str, dict], set[str]]:
        """All registries by gateway id, and every id known to be a gateway."""
        p = self.prefix
        found = self.read_retained([f"{p}gateways/+/registry", f"{p}gateways/+/status"])
        registries, gateways = {}, set()
        for topic, payload in found.items():
            gw, kind = topic[len(p) + len("gateways/"):].split("/", 1)
            gateways.add(gw)
            if kind == "registry":
                try:
                    registries[gw] = json.loads(payload)
                except ValueError:
                    registries[gw] = empty_registry()
        return registries, gateways

    def invoke(self, device: str, method: str, payload: bytes, timeout: float) -> tuple[int, bytes]:
        """(status, payload); 504 from here if nobody answers within the timeout and a margin."""
        reply = f"{self.prefix}operators/{self.client_id}/methods/res/{uuid.uuid4().hex}"
        collector = self._collect([reply])
        try:
            correlation = uuid.uuid4().bytes
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply
            props.CorrelationData = correlation
            props.UserProperty = [("timeout", f"{timeout:g}")]
            self._connected()
            self.client.publish(contract.method_topic(self.prefix, device, method), payload,
                                qos=1, properties=props)

            def answer() -> mqtt.MQTTMessage | None:
                return next((m for m in collector.messages
                             if m.properties.CorrelationData == correlation), None)

            if not self._wait(lambda: answer() is not None, timeout + 5):
                return 504, json.dumps({"message": f"no gateway answered for {device} within "
                                                   f"{timeout:g} s"}).encode()
            with self._cond:
                msg = answer()
        finally:
            self._release(collector)
        status = dict(getattr(msg.properties, "UserProperty", None) or []).get("status", "500")
        return int(status), msg.payload

    def send(self, device: str, payload: bytes, properties: list[tuple[str, str]],
             ttl: int | None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if properties:
            props.UserProperty = properties
        if ttl is not None:
            props.MessageExpiryInterval = ttl
        self._connected()
        info = self.client.publish(contract.devicebound_topic(self.prefix, device), payload,
                                   qos=1, properties=props)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise CloudUnavailable("the cloud broker did not acknowledge the message")

    def _connected(self) -> None:
        """Refuse a write while paho is reconnecting: it would queue the message and send it
        after we had said that nothing was written."""
        if not self.client.is_connected():
            raise CloudUnavailable(f"the connection to the cloud broker at {self.target.host}:"
                                   f"{self.target.port} is down (reconnecting); nothing was sent")

    def close(self) -> None:
        props = None
        if self._session_expiry:  # the command is done: the broker need keep nothing for it
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        self.client.loop_stop()
