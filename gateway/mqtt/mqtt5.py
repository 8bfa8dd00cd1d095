"""MQTT 5 on the wire, client side: what the gateway sends the cloud broker and reads back.

The children speak MQTT 3.1.1 (codec.py); the cloud speaks MQTT 5 because the contract carries
user properties and message expiry. This module only turns packets into bytes and bytes into
packets; cloud_session.py owns the socket. A telemetry PUBLISH is built from pre-encoded pieces
with one join, because it is built once per forwarded message and paho's general Properties
object cost more CPU than the rest of the gateway's path together (docs/performance.md).

Reference: OASIS MQTT Version 5.0, sections 2.2.2 (properties), 3.1-3.15 (packets).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from gateway.errors import PeerError
from gateway.mqtt.codec import remaining_length_bytes

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT, AUTH = 12, 13, 14, 15

PINGREQ_BYTES = b"\xc0\x00"
DISCONNECT_BYTES = b"\xe0\x00"

# property identifiers (MQTT 5.0, 2.2.2.2)
P_MESSAGE_EXPIRY = 0x02
P_RESPONSE_TOPIC = 0x08
P_CORRELATION = 0x09
P_SESSION_EXPIRY = 0x11
P_REASON_STRING = 0x1F
P_RECEIVE_MAXIMUM = 0x21
P_USER_PROPERTY = 0x26

_BYTE_PROPS = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_U16_PROPS = {0x13, 0x21, 0x22, 0x23}
_U32_PROPS = {0x02, 0x11, 0x18, 0x27}
_STRING_PROPS = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_BINARY_PROPS = {0x09, 0x16}

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

REASONS = {
    0x00: "Success", 0x04: "Disconnect with Will Message", 0x10: "No matching subscribers",
    0x80: "Unspecified error", 0x81: "Malformed Packet", 0x82: "Protocol Error",
    0x83: "Implementation specific error", 0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid", 0x86: "Bad user name or password",
    0x87: "Not authorized", 0x88: "Server unavailable", 0x89: "Server busy", 0x8A: "Banned",
    0x8B: "Server shutting down", 0x8C: "Bad authentication method", 0x8D: "Keep Alive timeout",
    0x8E: "Session taken over", 0x8F: "Topic Filter invalid", 0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use", 0x92: "Packet Identifier not found",
    0x93: "Receive Maximum exceeded", 0x94: "Topic Alias invalid", 0x95: "Packet too large",
    0x96: "Message rate too high", 0x97: "Quota exceeded", 0x98: "Administrative action",
    0x99: "Payload format invalid", 0x9A: "Retain not supported", 0x9B: "QoS not supported",
    0x9C: "Use another server", 0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported", 0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time", 0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}


def reason_name(code: int) -> str:
    return REASONS.get(code, f"reason code 0x{code:02x}")


class MalformedPacket(PeerError):
    """The broker sent bytes that are not MQTT 5; the connection cannot continue."""


# -- encoding ---------------------------------------------------------------------------------


def string(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise ValueError(f"string of {len(raw)} bytes is longer than MQTT allows (65535)")
    return _U16.pack(len(raw)) + raw


def binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"binary field of {len(data)} bytes is longer than MQTT allows (65535)")
    return _U16.pack(len(data)) + data


def user_property(key: str, value: str) -> bytes:
    return bytes((P_USER_PROPERTY,)) + string(key) + string(value)


def message_expiry(secs: int) -> bytes:
    return bytes((P_MESSAGE_EXPIRY,)) + _U32.pack(min(secs, 0xFFFFFFFF))


def properties(*encoded: bytes) -> bytes:
    """Properties already encoded one by one, with their length in front."""
    body = b"".join(encoded)
    return remaining_length_bytes(len(body)) + body


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + remaining_length_bytes(len(body)) + body


@dataclass(frozen=True)
class WillMessage:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def connect(
    client_id: str,
    keepalive: int,
    *,
    clean_start: bool = False,
    session_expiry: int = 0,
    username: str | None = None,
    password: str | None = None,
    will: WillMessage | None = None,
    receive_maximum: int = 0,
) -> bytes:
    flags = 0x02 if clean_start else 0
    payload = [string(client_id)]
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += [properties(), string(will.topic), binary(will.payload)]
    if username is not None:
        flags |= 0x80
        payload.append(string(username))
    if password is not None:
        flags |= 0x40
        payload.append(binary(password.encode()))
    raw = bytes((P_SESSION_EXPIRY,)) + _U32.pack(session_expiry) if session_expiry else b""
    if receive_maximum:
        raw += bytes((P_RECEIVE_MAXIMUM,)) + _U16.pack(receive_maximum)
    props = properties(raw) if raw else b"\x00"
    head = string("MQTT") + bytes((5, flags)) + _U16.pack(keepalive) + props
    return _frame(0x10, head + b"".join(payload))


def publish(
    topic: bytes, packet_id: int, props: bytes, payload: bytes, *, retain: bool = False
) -> bytes:
    """A QoS 1 PUBLISH; `topic` is already encoded with its length (`string(topic)`) and
    `props` with its length (`properties(...)`), so the hot path re-encodes neither."""
    body = b"".join((topic, _U16.pack(packet_id), props, payload))
    return bytes((0x33 if retain else 0x32,)) + remaining_length_bytes(len(body)) + body


def puback(packet_id: int) -> bytes:
    return b"\x40\x02" + _U16.pack(packet_id)


def subscribe(packet_id: int, topics: list[str], qos: int = 1) -> bytes:
    body = [_U16.pack(packet_id), b"\x00"]
    for topic in topics:
        body += [string(topic), bytes((qos,))]
    return _frame(0x82, b"".join(body))


def unsubscribe(packet_id: int, topics: list[str]) -> bytes:
    return _frame(0xA2, b"".join([_U16.pack(packet_id), b"\x00", *map(string, topics)]))


# -- decoding ---------------------------------------------------------------------------------


@dataclass
class Properties:
    """The properties the gateway reads; the rest are parsed (to skip them) and dropped."""

    values: dict[int, object] = field(default_factory=dict)
    user: list[tuple[str, str]] = field(default_factory=list)

    def get(self, ident: int, default=None):
        return self.values.get(ident, default)


@dataclass(frozen=True)
class ConnAck:
    session_present: bool
    reason: int
    props: Properties


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    packet_id: int
    retain: bool
    props: Properties


@dataclass(slots=True)  # one per PUBACK from the broker: not frozen (its __init__ costs 4x)
class Ack:
    """PUBACK, SUBACK or UNSUBACK: the packet id and its reason code(s)."""

    kind: int
    packet_id: int
    reasons: bytes


@dataclass(frozen=True)
class Disconnect:
    reason: int
    reason_string: str


@dataclass(frozen=True)
class PingResp:
    pass


Packet = ConnAck | Publish | Ack | Disconnect | PingResp


def varint(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None when the bytes end first."""
    value, shift = 0, 0
    for i in range(4):
        if pos + i >= len(data):
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MalformedPacket("remaining length longer than 4 bytes")


_ACCEPTS = frozenset((0x00, 0x10))  # the PUBACK reasons that accept (section 3.4.2.1)


class Reader:
    """Splits the broker's byte stream into packets; keeps a partial packet for the next read."""

    def __init__(self, max_packet_bytes: int = 256 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._max = max_packet_bytes

    def feed(self, data: bytes, acks_as_ids: bool = False) -> list[Packet | int]:
        """The packets now complete. With `acks_as_ids`, a PUBACK that accepts and has no
        properties (nearly every packet an uplink gets) is its packet id alone, an int: no
        object per relayed message. A broker may spell that PUBACK three ways (section 3.4.2.1):
        the packet id alone, with a reason byte, or with it and a property length of 0;
        mosquitto sends the second. Both success codes take this path: 0x00, and 0x10 (no
        matching subscribers), which mosquitto sends for every message nobody subscribes to
        and which accepts the message all the same."""
        buf = self._buf
        buf += data
        out: list[Packet | int] = []
        pos = 0
        end = len(buf)
        while pos < end:
            first = buf[pos]
            if first == 0x40 and pos + 4 <= end:  # a PUBACK: the common one is 2 to 4 bytes
                length = buf[pos + 1]
                if length == 2 or (
                        length == 3 and pos + 5 <= end and buf[pos + 4] in _ACCEPTS) or (
                        length == 4 and pos + 6 <= end and buf[pos + 4] in _ACCEPTS
                        and buf[pos + 5] == 0):
                    packet_id = (buf[pos + 2] << 8) | buf[pos + 3]
                    if acks_as_ids:
                        out.append(packet_id)
                    else:
                        out.append(Ack(PUBACK, packet_id,
                                       bytes(buf[pos + 4 : pos + 5]) if length > 2 else b""))
                    pos += 2 + length
                    continue
            header = varint(buf, pos + 1)
            if header is None:
                break
            length, body_at = header
            if length > self._max:
                raise MalformedPacket(f"packet of {length} bytes is over the limit")
            if body_at + length > end:
                break
            out.append(parse(first, bytes(buf[body_at : body_at + length])))
            pos = body_at + length
        del buf[:pos]
        return out


def parse(first: int, body: bytes) -> Packet:
    kind = first >> 4
    try:
        if kind == PUBLISH:
            return _parse_publish(first, body)
        if kind in (PUBACK, SUBACK, UNSUBACK):
            return _parse_ack(kind, body)
        if kind == CONNACK:
            props, _ = _parse_properties(body, 2)
            return ConnAck(bool(body[0] & 1), body[1], props)
        if kind == PINGRESP:
            return PingResp()
        if kind == DISCONNECT:
            reason = body[0] if len(body) else 0
            props = _parse_properties(body, 1)[0] if len(body) > 1 else Properties()
            return Disconnect(reason, str(props.get(P_REASON_STRING, "")))
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise MalformedPacket(f"packet type {kind} cut short or garbled: {exc}") from None
    raise MalformedPacket(f"packet type {kind} is not one a broker sends a client")


def _parse_publish(first: int, body: bytes) -> Publish:
    qos = (first >> 1) & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    tlen = _U16.unpack_from(body, 0)[0]
    topic = body[2 : 2 + tlen].decode()
    pos = 2 + tlen
    packet_id = 0
    if qos:
        packet_id = _U16.unpack_from(body, pos)[0]
        pos += 2
    props, pos = _parse_properties(body, pos)
    return Publish(topic, body[pos:], qos, packet_id, bool(first & 1), props)


def _parse_ack(kind: int, body: bytes) -> Ack:
    packet_id = _U16.unpack_from(body, 0)[0]
    if kind == PUBACK:
        return Ack(kind, packet_id, body[2:3])
    _, pos = _parse_properties(body, 2)
    return Ack(kind, packet_id, body[pos:])


def _parse_properties(body: bytes, pos: int) -> tuple[Properties, int]:
    props = Properties()
    if pos >= len(body):
        return props, pos
    header = varint(body, pos)
    if header is None:
        raise MalformedPacket("property length cut short")
    length, pos = header
    end = pos + length
    while pos < end:
        ident = body[pos]
        pos += 1
        if ident in _BYTE_PROPS:
            props.values[ident] = body[pos]
            pos += 1
        elif ident in _U16_PROPS:
            props.values[ident] = _U16.unpack_from(body, pos)[0]
            pos += 2
        elif ident in _U32_PROPS:
            props.values[ident] = _U32.unpack_from(body, pos)[0]
            pos += 4
        elif ident in _STRING_PROPS or ident in _BINARY_PROPS:
            n = _U16.unpack_from(body, pos)[0]
            raw = body[pos + 2 : pos + 2 + n]
            props.values[ident] = raw.decode() if ident in _STRING_PROPS else raw
            pos += 2 + n
        elif ident == P_USER_PROPERTY:
            klen = _U16.unpack_from(body, pos)[0]
            key = body[pos + 2 : pos + 2 + klen].decode()
            pos += 2 + klen
            vlen = _U16.unpack_from(body, pos)[0]
            props.user.append((key, body[pos + 2 : pos + 2 + vlen].decode()))
            pos += 2 + vlen
        elif ident == 0x0B:  # subscription identifier, a variable byte integer
            value = varint(body, pos)
            if value is None:
                raise MalformedPacket("subscription identifier cut short")
            props.values[ident], pos = value
        else:
            raise MalformedPacket(f"unknown property 0x{ident:02x}")
    if pos != end:
        raise MalformedPacket("properties overrun their length")
    return props, end
