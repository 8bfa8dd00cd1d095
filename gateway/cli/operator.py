"""The operator's side of the cloud contract: what `gatewayctl` does against the cloud broker.

IoT Edge operators manage children with `az iot hub device-identity ...`; here the cloud is an
MQTT broker, so the same jobs are retained documents and MQTT 5 request/response on the topics of
docs/cloud-contract.md. Document edits are read-modify-write of retained documents, checked
before anything is written, so a refused command changes nothing.

The registry rules an operator can break are checked here because the gateway cannot see other
gateways: a child has one parent, and a gateway is not anyone's child.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import threading
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.child.auth import normalize_thumbprint, parse_registry
from gateway.errors import EX_UNAVAILABLE, EX_USAGE, GatewayError, RegistryError
from gateway.hub.settings import MAX_TTL_SECS
from gateway.modules.deployment import DeploymentError, parse_deployment
from gateway.upstream import cloud_contract as contract


class OperatorError(GatewayError):
    """A refused operator command; the message is the one line to print."""


class OperatorUsageError(OperatorError):
    """A flag of the command is wrong; nothing was sent."""

    exit_code = EX_USAGE


class CloudUnavailable(OperatorError):
    """The cloud broker cannot be reached or does not answer; nothing was changed by us."""

    exit_code = EX_UNAVAILABLE


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


def new_sas_key() -> str:
    """A 256-bit key, base64, as IoT Hub generates them."""
    return base64.b64encode(os.urandom(32)).decode()


def connection_string(hub_hostname: str, device_id: str, key: str, gateway_host: str) -> str:
    """What the device SDKs take: HostName is the SAS audience, GatewayHostName where to dial."""
    return (f"HostName={hub_hostname};DeviceId={device_id};SharedAccessKey={key};"
            f"GatewayHostName={gateway_host}")


# -- registry documents (pure) -------------------------------------------------------------------


def empty_registry() -> dict:
    return {"version": 0, "children": []}


def check_new_children(gateway_id: str, devices: list[str], registries: dict[str, dict],
                       gateways: set[str]) -> None:
    """Refuse second parents, gateways as children, and duplicates, naming the device."""
    if len(set(devices)) != len(devices):
        raise OperatorError("the same device is named twice")
    for device in devices:
        if device in gateways or device == gateway_id:
            raise OperatorError(f"{device} is a gateway; a gateway cannot be a child device")
        for parent, doc in registries.items():
            if any(c.get("deviceId") == device for c in doc.get("children", [])):
                if parent == gateway_id:
                    raise OperatorError(f"{device} is already a child of {gateway_id}")
                raise OperatorError(
                    f"{device} already has a parent, {parent}; remove it there first "
                    f"(gatewayctl children remove {parent} {device})")


def add_children(doc: dict, devices: list[str], thumbprint: str | None) -> tuple[dict, dict]:
    """A new registry document with the devices added; returns it and each device's key."""
    keys: dict[str, str] = {}
    children = list(doc.get("children", []))
    for device in devices:
        if thumbprint:
            try:
                auth = {"type": "x509", "primaryThumbprint": normalize_thumbprint(thumbprint)}
            except ValueError as exc:
                raise OperatorError(f"--x509-thumbprint: {exc}") from None
        else:
            keys[device] = new_sas_key()
            auth = {"type": "sas", "primaryKey": keys[device]}
        children.append({"deviceId": device, "status": "enabled", "auth": auth})
    return _next_version(doc, children), keys


def change_children(doc: dict, devices: list[str], action: str) -> dict:
    """remove, enable or disable; every named device must be a child already."""
    known = {c.get("deviceId") for c in doc.get("children", [])}
    missing = [d for d in devices if d not in known]
    if missing:
        raise OperatorError(f"not children of this gateway: {', '.join(missing)}")
    children = []
    for child in doc.get("children", []):
        if child.get("deviceId") not in devices:
            children.append(child)
        elif action != "remove":
            children.append(dict(child, status="enabled" if action == "enable" else "disabled"))
    return _next_version(doc, children)


def _next_version(doc: dict, children: list[dict]) -> dict:
    new = dict(doc, version=int(doc.get("version", 0)) + 1, children=children)
    try:
        parse_registry(json.dumps(new).encode())  # what the gateway will check, checked first
    except RegistryError as exc:
        raise OperatorError(
            f"the new registry would be refused by the gateway: {exc.message}"
        ) from None
    return new


def merge_desired(doc: dict | None, patch: dict) -> dict:
    """The operator's desired patch on the full document: null deletes, $version goes up."""
    from gateway.hub.twins import merge_patch  # the same merge rules as the gateway's

    new = dict(doc or {"$version": 0})
    version = int(new.pop("$version", 0))
    patch = {k: v for k, v in patch.items() if k != "$version"}
    merge_patch(new, patch)
    new["$version"] = version + 1
    return new


def set_ttl(doc: dict | None, ttl: int) -> dict:
    if isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL_SECS:
        raise OperatorUsageError(f"--ttl: expected 1..{MAX_TTL_SECS} seconds, got {ttl}")
    new = dict(doc or {"schemaVersion": "1.0", "routes": {}})
    new.setdefault("schemaVersion", "1.0")
    section = dict(new.get("storeAndForwardConfiguration") or {})
    section["timeToLiveSecs"] = ttl
    new["storeAndForwardConfiguration"] = section
    new["$version"] = int(new.get("$version", 0)) + 1
    return new


def deployment_document(text: bytes, source: str, current: dict | None) -> dict:
    """The document to publish: FILE's, with the next version if it has none, checked by the
    gateway's own parser. A version not newer than the one in the cloud is refused, since the
    gateway would ignore it."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DeploymentError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DeploymentError(f"{source}: expected a JSON object")
    in_cloud = (current or {}).get("version")
    in_cloud = in_cloud if type(in_cloud) is int else -1
    if "version" not in doc:
        doc = {**doc, "version": in_cloud + 1}
    try:
        parse_deployment(json.dumps(doc).encode())
    except DeploymentError as exc:
        raise DeploymentError(f"{source}: refused, nothing published: {exc.message}") from None
    if doc["version"] <= in_cloud:
        raise OperatorError(f"{source}: version {doc['version']} is not newer than version "
                            f"{in_cloud} in the cloud, so the gateway would ignore it; raise it "
                            f"or leave version out (the next one is then used)")
    return doc


# -- the broker ----------------------------------------------------------------------------------


class CloudSession:
    """One MQTT 5 connection to the cloud broker, with paho's thread, for one command."""

    def __init__(self, target: CloudTarget, timeout: float = 10.0) -> None:
        self.target = target
        self.prefix = target.prefix
        self.timeout = timeout
        self._cond = threading.Condition()
        self._messages: list[mqtt.MQTTMessage] = []
        self._subacks = 0
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
        try:
            self.client.connect(target.host, target.port, keepalive=30)
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
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self._subacks += 1
            self._cond.notify_all()

    def _wait(self, predicate, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout or self.timeout)

    def _subscribe(self, filters: list[str]) -> None:
        with self._cond:
            want = self._subacks + 1
        self.client.subscribe([(f, 1) for f in filters])
        if not self._wait(lambda: self._subacks >= want):
            raise CloudUnavailable("the cloud broker did not answer a SUBSCRIBE")

    def read_retained(self, filters: list[str]) -> dict[str, bytes]:
        """Every retained document under the filters: a probe published after the SUBSCRIBE
        comes back after the retained messages, so its arrival ends the read (no fixed wait)."""
        probe = f"{self.prefix}operators/{self.client_id}/probe"
        self._subscribe([*filters, probe])
        token = uuid.uuid4().bytes
        self.client.publish(probe, token, qos=1)
        if not self._wait(lambda: any(m.topic == probe and m.payload == token
                                      for m in self._messages)):
            raise CloudUnavailable("the cloud broker did not deliver the read probe")
        with self._cond:
            got = {m.topic: m.payload for m in self._messages if m.topic != probe and m.retain}
        self.client.unsubscribe([*filters, probe])
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

    def put_retained(self, topic: str, doc: dict) -> None:
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
        self._subscribe([reply])
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply
        props.CorrelationData = correlation
        props.UserProperty = [("timeout", f"{timeout:g}")]
        self.client.publish(contract.method_topic(self.prefix, device, method), payload, qos=1,
                            properties=props)

        def answered() -> bool:
            return any(m.topic == reply and m.properties.CorrelationData == correlation
                       for m in self._messages)

        if not self._wait(answered, timeout + 5):
            return 504, json.dumps({"message": f"no gateway answered for {device} within "
                                               f"{timeout:g} s"}).encode()
        with self._cond:
            msg = next(m for m in self._messages if m.topic == reply)
        status = dict(getattr(msg.properties, "UserProperty", None) or []).get("status", "500")
        return int(status), msg.payload

    def send(self, device: str, payload: bytes, properties: list[tuple[str, str]],
             ttl: int | None) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if properties:
            props.UserProperty = properties
        if ttl is not None:
            props.MessageExpiryInterval = ttl
        info = self.client.publish(contract.devicebound_topic(self.prefix, device), payload,
                                   qos=1, properties=props)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise CloudUnavailable("the cloud broker did not acknowledge the message")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
