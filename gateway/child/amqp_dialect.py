"""The IoT Hub device dialect of AMQP 1.0, translated to the MQTT dialect the gateway serves.

The 5671 head (child/amqp.py) does not get a second copy of the hub's rules: every AMQP request
becomes the PUBLISH an MQTT child would have sent (telemetry under `devices/{id}/messages/events/`
with its property bag, twin and method requests under `$iothub/...` with a request id), and every
answer the hub delivers to a topic becomes the AMQP message on the link the SDK listens on. Pure
functions of strings and proton Messages: no I/O. References: "Communicate with your IoT hub by
using the AMQP protocol" (Azure IoT Hub documentation), and the link addresses of the Node SDK
(azure-iot-common's endpoint.js).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode

from cproton import pn_message_get_content_encoding, pn_message_get_content_type
from proton import Message

from gateway import identity
from gateway.errors import PeerError

# what each system property is called in a property bag (the MQTT dialect's `$.` names)
SYSTEM = (("id", "$.mid"), ("correlation_id", "$.cid"), ("content_type", "$.ct"),
          ("content_encoding", "$.ce"))
OUTPUT_NAME = "iothub-outputname"  # a module's output, `$.on` in the bag
INPUT_ANNOTATION = "x-opt-input-name"
METHOD_NAME = "IoThub-methodname"
METHOD_STATUS = "IoThub-status"
CBS = "$cbs"

# what a link is for, named after its address and which end sends
TELEMETRY = "telemetry"  # the child sends: /devices/{id}/messages/events
C2D = "c2d"  # the child receives: .../messages/devicebound (a module's inputs: .../messages/events)
TWIN_REQUESTS = "twin-requests"  # the child sends on /devices/{id}/twin
TWIN_ANSWERS = "twin-answers"  # the child receives on /devices/{id}/twin
METHOD_REQUESTS = "method-requests"  # the child receives on /devices/{id}/methods/devicebound
METHOD_ANSWERS = "method-answers"  # the child sends on /devices/{id}/methods/devicebound
CBS_REQUESTS = "cbs-requests"
CBS_ANSWERS = "cbs-answers"


class AmqpRefused(PeerError):
    """A request outside the dialect; `condition` is the AMQP error condition to answer with."""

    def __init__(self, condition: str, reason: str) -> None:
        super().__init__(reason)
        self.condition = condition


@dataclass(frozen=True, slots=True)
class Audience:
    """Who a CBS put-token or a SASL PLAIN user speaks for: the hub host and the identity."""

    host: str
    identity: str  # a device id, or "{gateway}/{module}"

    @property
    def username(self) -> str:
        """The MQTT username the authenticator expects for this identity."""
        return f"{self.host}/{self.identity}/?api-version=2021-04-12"


def parse_audience(name: str) -> Audience:
    """`{host}/devices/{id}` or `{host}/devices/{gw}/modules/{m}`, URL-encoded or not."""
    parts = unquote(name).strip("/").split("/")
    if len(parts) == 3 and parts[1] == "devices" and parts[0] and parts[2]:
        return Audience(parts[0], parts[2])
    if len(parts) == 5 and parts[1] == "devices" and parts[3] == "modules" and all(parts):
        return Audience(parts[0], f"{parts[2]}/{parts[4]}")
    raise AmqpRefused("amqp:unauthorized-access",
                      f"put-token name {name!r} is not '{{hub}}/devices/{{device id}}'")


def parse_plain_user(user: str, token: str) -> Audience:
    """SASL PLAIN's `{device}@sas.{hub}` (a module's `{gw}/modules/{m}@sas.{hub}`); the host is
    the token's `sr`, which the authenticator checks against the gateway's hub anyway."""
    who, at, realm = user.rpartition("@")
    if not at or not who or not realm.startswith("sas."):
        raise AmqpRefused("amqp:unauthorized-access",
                          f"SASL PLAIN user {user!r} is not '{{device id}}@sas.{{hub name}}'")
    device, _, module = who.partition("/modules/")
    sr = next((v for k, v in _sas_fields(token) if k == "sr"), "")
    host = unquote(sr).split("/")[0] or realm[len("sas."):]
    return Audience(host, f"{device}/{module}" if module else device)


def _sas_fields(token: str) -> list[tuple[str, str]]:
    body = token.removeprefix("SharedAccessSignature ")
    return [tuple(p.split("=", 1)) for p in body.split("&") if "=" in p]  # type: ignore[misc]


def token_expiry(token: str) -> int | None:
    """The token's `se` (seconds since the epoch), None if it has none a number."""
    se = next((v for k, v in _sas_fields(token) if k == "se"), "")
    return int(se) if se.isdigit() else None


def address_identity(address: str) -> str:
    """Whom a link address speaks for: `/devices/{id}/...` or `/devices/{gw}/modules/{m}/...`
    ("" for anything else). An X.509 child sends no put-token (the Node SDK goes straight to
    its links), so its first link is where its identity comes from; link_role then holds it
    to that identity."""
    parts = address.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "devices" or not parts[1]:
        return ""
    who, _rest = identity.from_path(parts[1:])
    return who


def link_role(device_id: str, address: str, child_sends: bool) -> str:
    """What a link attached by `device_id` at `address` is for; AmqpRefused if nothing here,
    or if it names another identity (a child speaks only for itself, as in IoT Hub)."""
    if address == CBS:
        return CBS_REQUESTS if child_sends else CBS_ANSWERS
    base = f"/devices/{identity.path(device_id)}"
    rest = address.removeprefix(base) if address.startswith(base + "/") else ""
    module = identity.is_module(device_id)
    roles = {
        ("/messages/events", True): TELEMETRY,
        ("/messages/events" if module else "/messages/devicebound", False): C2D,
        ("/twin", True): TWIN_REQUESTS,
        ("/twin", False): TWIN_ANSWERS,
        ("/methods/devicebound", False): METHOD_REQUESTS,
        ("/methods/devicebound", True): METHOD_ANSWERS,
    }
    role = roles.get((rest, child_sends))
    if role is None:
        raise AmqpRefused(
            "amqp:not-found",
            f"{'sender' if child_sends else 'receiver'} link address {address!r} is not one of "
            f"{base}/messages/events, /messages/devicebound, /twin or /methods/devicebound",
        )
    return role


def body_bytes(message: Message) -> bytes:
    """The payload: a data section as it is, a string as UTF-8; anything else is refused (an
    MQTT child could not have sent it either)."""
    body = message.body
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    raise AmqpRefused("amqp:decode-error",
                      f"message body is an AMQP {type(body).__name__}, not data or a string")


def _text(value: object) -> str:
    return str(value) if not isinstance(value, bytes) else value.decode("utf-8", "replace")


def property_bag(message: Message) -> str:
    """The MQTT property bag of a telemetry message: application properties, then the system
    properties under their `$.` names (a module's output name as `$.on`)."""
    pairs: list[tuple[str, str]] = []
    for key, value in (message.properties or {}).items():
        if key == OUTPUT_NAME:
            pairs.append(("$.on", _text(value)))
        elif value is not None:
            pairs.append((str(key), _text(value)))
    for attr, name in SYSTEM:
        value = _system_property(message, attr)
        if value not in (None, ""):
            pairs.append((name, _text(value)))
    return urlencode(pairs, quote_via=quote)


def _system_property(message: Message, attr: str) -> object:
    """A system property, None when unset: proton gives an unset content type or encoding
    as symbol('None') (symbol(None)), which is not the text a child sent."""
    if attr == "content_type":
        return pn_message_get_content_type(message._msg)
    if attr == "content_encoding":
        return pn_message_get_content_encoding(message._msg)
    return getattr(message, attr)


def telemetry_topic(device_id: str, message: Message) -> str:
    bag = property_bag(message)
    return f"devices/{identity.path(device_id)}/messages/events/{bag}"


def devicebound_message(device_id: str, topic: str, payload: bytes) -> Message:
    """A cloud-to-device message (a module's input) from the hub's inbox topic."""
    base = f"devices/{identity.path(device_id)}/"
    rest = topic.removeprefix(base)
    annotations = {}
    if identity.is_module(device_id):  # inputs/{input}/{bag}
        _, _, rest = rest.partition("inputs/")
        name, _, bag = rest.partition("/")
        annotations[INPUT_ANNOTATION] = name
    else:
        bag = rest.removeprefix("messages/devicebound/")
    msg = Message(body=payload, inferred=True)
    props = {}
    system = {name: attr for attr, name in SYSTEM}
    for key, value in parse_qsl(bag, keep_blank_values=True):
        if key in system:
            setattr(msg, system[key], value)
        elif key == "$.to":
            msg.address = value
        elif not key.startswith("$."):
            props[key] = value
    msg.properties = props or None
    if annotations:
        msg.annotations = annotations
    return msg


def _query(topic: str) -> dict[str, str]:
    return dict(parse_qsl(topic.partition("?")[2], keep_blank_values=True))


def twin_request_topic(operation: str, resource: str, rid: str) -> str | None:
    """The MQTT twin topic of an AMQP twin request; None for the desired-notification switch
    (PUT/DELETE of /notifications/twin/properties/desired), which the head answers itself."""
    if operation == "GET":
        return f"$iothub/twin/GET/?$rid={rid}"
    if operation == "PATCH" and resource == "/properties/reported":
        return f"$iothub/twin/PATCH/properties/reported/?$rid={rid}"
    if operation in ("PUT", "DELETE") and resource == "/notifications/twin/properties/desired":
        return None
    raise AmqpRefused("amqp:not-implemented",
                      f"twin operation {operation!r} on {resource!r} is not served")


def twin_answer(topic: str, payload: bytes, correlation: object) -> Message:
    """`$iothub/twin/res/{status}/?$rid=&$version=` as the answer the SDK waits for."""
    status = topic[len("$iothub/twin/res/"):].partition("/")[0]
    annotations: dict = {"status": int(status) if status.isdigit() else 500}
    version = _query(topic).get("$version", "")
    if version.isdigit():
        annotations["version"] = int(version)
    msg = Message(body=payload, inferred=True, correlation_id=correlation)
    msg.annotations = annotations
    return msg


def desired_patch(payload: bytes) -> Message:
    """A desired-properties patch: no correlation id, the patch as the body."""
    return Message(body=payload, inferred=True)


def method_request(topic: str, payload: bytes) -> Message:
    """`$iothub/methods/POST/{method}/?$rid=` as a request on the methods link."""
    method = topic[len("$iothub/methods/POST/"):].partition("/")[0]
    msg = Message(body=payload, inferred=True, correlation_id=_query(topic).get("$rid", ""))
    msg.properties = {METHOD_NAME: method}
    return msg


def method_answer_topic(message: Message) -> str:
    """A method response's `$iothub/methods/res/{status}/?$rid=`."""
    status = (message.properties or {}).get(METHOD_STATUS)
    rid = message.correlation_id
    if not isinstance(status, int) or rid in (None, ""):
        raise AmqpRefused("amqp:decode-error",
                          f"a method response needs an int {METHOD_STATUS} property and a "
                          "correlation id")
    if isinstance(rid, uuid.UUID | bytes):
        rid = _text(rid)
    return f"$iothub/methods/res/{int(status)}/?$rid={rid}"
