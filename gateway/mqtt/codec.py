"""MQTT 3.1.1 wire format: bytes in, packet objects out; packet objects in, bytes out.

Sans-I/O in the style of h11: nothing here touches a socket, an event loop or a clock, so every
rule of the spec can be tested with plain bytes, and the server is free to choose its own I/O.

Two kinds of failure are kept apart on purpose:
- `ProtocolError` is the *peer's* fault (malformed or forbidden bytes). It carries `.reason`, one
  short sentence for the journal; the connection must be closed (MQTT-4.8.0-1).
- `LocalProtocolError` is *our* fault: the gateway asked to encode a packet the spec forbids. It
  is a bug to fix, never something to send on the wire.

Protocol level 4 ("MQTT", 3.1.1) is the one spoken; level 3 ("MQIsdp", 3.1) CONNECTs are accepted
because old device firmware still sends them and the packet layouts are otherwise identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from gateway.errors import GatewayError, InternalError, PeerError
from gateway.mqtt import topics

__all__ = [
    "CONNACK_ACCEPTED",
    "CONNACK_BAD_CREDENTIALS",
    "CONNACK_BAD_PROTOCOL",
    "CONNACK_ID_REJECTED",
    "CONNACK_NOT_AUTHORIZED",
    "CONNACK_UNAVAILABLE",
    "MAX_REMAINING_LENGTH",
    "SUBACK_FAILURE",
    "ConnAck",
    "Connect",
    "Decoder",
    "Disconnect",
    "LocalProtocolError",
    "MQTTError",
    "Packet",
    "PacketTooLarge",
    "PingReq",
    "PingResp",
    "ProtocolError",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "SubAck",
    "Subscribe",
    "UnsubAck",
    "Unsubscribe",
    "UnsupportedProtocol",
    "Will",
    "encode",
    "remaining_length_bytes",
]

# -- constants ------------------------------------------------------------------------------------

CONNACK_ACCEPTED = 0
CONNACK_BAD_PROTOCOL = 1
CONNACK_ID_REJECTED = 2
CONNACK_UNAVAILABLE = 3
CONNACK_BAD_CREDENTIALS = 4
CONNACK_NOT_AUTHORIZED = 5

SUBACK_FAILURE = 0x80

MAX_REMAINING_LENGTH = 268_435_455  # four 7-bit groups (section 2.2.3)
_MAX_UINT16 = 0xFFFF

# Control packet types (section 2.2.1).
_CONNECT = 1
_CONNACK = 2
_PUBLISH = 3
_PUBACK = 4
_PUBREC = 5
_PUBREL = 6
_PUBCOMP = 7
_SUBSCRIBE = 8
_SUBACK = 9
_UNSUBSCRIBE = 10
_UNSUBACK = 11
_PINGREQ = 12
_PINGRESP = 13
_DISCONNECT = 14

_TYPE_NAMES = {
    _CONNECT: "CONNECT",
    _CONNACK: "CONNACK",
    _PUBLISH: "PUBLISH",
    _PUBACK: "PUBACK",
    _PUBREC: "PUBREC",
    _PUBREL: "PUBREL",
    _PUBCOMP: "PUBCOMP",
    _SUBSCRIBE: "SUBSCRIBE",
    _SUBACK: "SUBACK",
    _UNSUBSCRIBE: "UNSUBSCRIBE",
    _UNSUBACK: "UNSUBACK",
    _PINGREQ: "PINGREQ",
    _PINGRESP: "PINGRESP",
    _DISCONNECT: "DISCONNECT",
}

# Fixed-header flag nibble every non-PUBLISH type must carry (section 2.2.2, MQTT-2.2.2-1/2).
_REQUIRED_FLAGS = {t: 0 for t in _TYPE_NAMES if t != _PUBLISH}
_REQUIRED_FLAGS[_PUBREL] = _REQUIRED_FLAGS[_SUBSCRIBE] = _REQUIRED_FLAGS[_UNSUBSCRIBE] = 0b0010

_PROTOCOLS = {4: b"MQTT", 3: b"MQIsdp"}  # protocol level -> protocol name it must come with
_SUBACK_CODES = frozenset({0, 1, 2, SUBACK_FAILURE})


# -- errors ---------------------------------------------------------------------------------------


class MQTTError(GatewayError):
    """Base of everything this module raises on purpose."""


class ProtocolError(MQTTError, PeerError):
    """The peer sent something MQTT 3.1.1 forbids; close the connection and log `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PacketTooLarge(ProtocolError):
    """A fixed header announced a packet bigger than we are willing to buffer."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"packet of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class UnsupportedProtocol(ProtocolError):
    """CONNECT named a protocol or level we do not speak; answer CONNACK 1 then close
    (MQTT-3.1.2-2)."""

    return_code = CONNACK_BAD_PROTOCOL


class LocalProtocolError(MQTTError, InternalError):
    """We were asked to encode a packet the spec forbids: a bug on this side, not the peer's."""


# -- packets --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Will:
    """The message the server publishes for a client that vanishes without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Connect:
    """First packet from a client. `password` is bytes: MQTT defines it as binary data, and SAS
    tokens or other secrets must not be forced through a text codec."""

    client_id: str
    username: str | None = None
    password: bytes | None = None
    keepalive: int = 60
    clean_session: bool = True
    will: Will | None = None
    protocol_level: int = 4


@dataclass(frozen=True, slots=True)
class ConnAck:
    """Server's answer to CONNECT; `return_code` is one of the CONNACK_* constants."""

    session_present: bool
    return_code: int


# Not frozen: one is decoded per child message, and a frozen __init__ sets each field through
# object.__setattr__ (four times the cost). Nothing changes a decoded packet.
@dataclass(slots=True)
class Publish:
    """An application message. `packet_id` is None exactly when `qos` is 0 (MQTT-2.3.1-5)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PubRec:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PubRel:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PubComp:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """`topics` is ((filter, requested QoS), ...), in the order the client sent them."""

    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class SubAck:
    """One return code per SUBSCRIBE filter, same order: granted QoS or SUBACK_FAILURE."""

    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnsubAck:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PingReq:
    pass


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    pass


Packet: TypeAlias = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
)

# Stateless packets are decoded to shared instances: equal anyway, and no allocation per ping.
_PINGREQ_PACKET = PingReq()
_PINGRESP_PACKET = PingResp()
_DISCONNECT_PACKET = Disconnect()


# -- decoding -------------------------------------------------------------------------------------


class Decoder:
    """Incremental decoder: feed it whatever the socket gave, get back the complete packets.

    One Decoder per connection. Partial packets stay buffered between calls. The size limit is
    enforced from the fixed header alone, so a peer announcing a huge packet is refused before
    a single body byte is stored. After a ProtocolError the stream position is unknowable, so
    the decoder stays dead and re-raises that error on every later call.
    """

    __slots__ = ("_buf", "_error", "max_packet_bytes")

    def __init__(self, max_packet_bytes: int = MAX_REMAINING_LENGTH) -> None:
        self.max_packet_bytes = max_packet_bytes  # whole packet: fixed header + body
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    def feed(self, data: bytes, max_packets: int | None = None) -> list[Packet]:
        """Append `data` and return every packet now complete, oldest first.

        With `max_packets`, parsing stops after that many and the rest stays buffered (a server
        reads CONNECT alone under a small size limit, then raises the limit)."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        self._buf += data
        packets: list[Packet] = []
        try:
            consumed = self._parse_buffer(packets, max_packets)
        except ProtocolError as exc:
            self._error = exc
            # A fresh buffer rather than clear(): a memoryview kept alive by the traceback would
            # make resizing the old one fail.
            self._buf = bytearray()
            raise
        if consumed:
            # Copy only the unparsed tail (at most one partial packet). When nothing completed we
            # keep extending in place, so a big packet arriving in many reads is never re-copied.
            self._buf = self._buf[consumed:]
        return packets

    def take_buffered(self) -> bytes:
        """The bytes of an unfinished packet, for a reader that goes on without the decoder
        (the bench's counter decodes until its SUBACK, then only counts fixed headers)."""
        rest, self._buf = bytes(self._buf), bytearray()
        return rest

    def _parse_buffer(self, out: list[Packet], max_packets: int | None = None) -> int:
        """Decode complete packets from the buffer into `out`; return how many bytes they used."""
        buf = self._buf
        size = len(buf)
        pos = 0
        view: memoryview | None = None
        try:
            while pos < size and (max_packets is None or len(out) < max_packets):
                header = _parse_fixed_header(buf, pos, size, self.max_packet_bytes)
                if header is None:
                    break
                first, body_start, body_end = header
                if body_end > size:
                    break
                if view is None:
                    view = memoryview(buf)
                body = view[body_start:body_end]
                try:
                    out.append(_parse_body(first, body))
                finally:
                    body.release()
                pos = body_end
        finally:
            if view is not None:
                view.release()
        return pos


def _parse_fixed_header(
    buf: bytearray, pos: int, size: int, limit: int
) -> tuple[int, int, int] | None:
    """Read the fixed header at `pos`: (first byte, body start, body end), or None if incomplete.

    Checks the type, the flag nibble and the size limit as soon as the bytes for each are here,
    so garbage and oversize announcements are refused without waiting for a body.
    """
    first = buf[pos]
    _check_type_and_flags(first)
    length = 0
    multiplier = 1
    i = pos + 1
    for n_bytes in range(1, 5):
        if i >= size:
            # The groups read so far already fix a lower bound on the size: refuse early.
            if 1 + n_bytes + length > limit:
                raise PacketTooLarge(1 + n_bytes + length, limit)
            return None
        byte = buf[i]
        i += 1
        length += (byte & 0x7F) * multiplier
        multiplier <<= 7
        if not byte & 0x80:
            total = 1 + n_bytes + length
            if total > limit:
                raise PacketTooLarge(total, limit)
            return first, i, i + length
    raise ProtocolError("remaining length is longer than 4 bytes (section 2.2.3)")


def _check_type_and_flags(first: int) -> None:
    """Refuse reserved packet types and wrong fixed-header flags (MQTT-2.2.2-2)."""
    ptype = first >> 4
    flags = first & 0x0F
    if ptype == _PUBLISH:
        if flags & 0b0110 == 0b0110:
            raise ProtocolError("PUBLISH has QoS 3, which is reserved (MQTT-3.3.1-4)")
        return
    required = _REQUIRED_FLAGS.get(ptype)
    if required is None:
        raise ProtocolError(f"packet type {ptype} is reserved")
    if flags != required:
        raise ProtocolError(
            f"{_TYPE_NAMES[ptype]} has fixed-header flags {flags:04b}, must be {required:04b} "
            "(MQTT-2.2.2-2)"
        )


def _parse_body(first: int, body: memoryview) -> Packet:
    """Turn one complete body into its packet object (flags were checked with the header)."""
    ptype = first >> 4
    if ptype == _PUBLISH:
        return _parse_publish(first & 0x0F, body)
    if ptype in _ID_ONLY:
        return _ID_ONLY[ptype](_parse_packet_id_only(ptype, body))
    if ptype in _EMPTY:
        if len(body):
            raise ProtocolError(
                f"{_TYPE_NAMES[ptype]} has a body of {len(body)} bytes, must be empty"
            )
        return _EMPTY[ptype]
    return _BODY_PARSERS[ptype](_Reader(body, _TYPE_NAMES[ptype]))


class _Reader:
    """Cursor over one packet body; every short read becomes a ProtocolError naming the field."""

    __slots__ = ("pos", "view", "what")

    def __init__(self, view: memoryview, what: str) -> None:
        self.view = view
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.view) - self.pos

    def _take(self, n: int, field: str) -> memoryview:
        end = self.pos + n
        if end > len(self.view):
            raise ProtocolError(f"{self.what} ends inside its {field} (body shorter than contents)")
        chunk = self.view[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, field: str) -> int:
        return self._take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self._take(2, field), "big")

    def packet_id(self) -> int:
        value = self.u16("packet identifier")
        if value == 0:
            raise ProtocolError(f"{self.what} has packet identifier 0 (MQTT-2.3.1-1)")
        return value

    def binary(self, field: str) -> bytes:
        return bytes(self._take(self.u16(field), field))

    def string(self, field: str) -> str:
        return _decode_string(self._take(self.u16(field), field), f"{self.what} {field}")

    def rest(self) -> bytes:
        chunk = bytes(self.view[self.pos :])
        self.pos = len(self.view)
        return chunk

    def finish(self) -> None:
        """Refuse trailing bytes: a body longer than what it declares is malformed."""
        extra = len(self.view) - self.pos
        if extra:
            raise ProtocolError(f"{self.what} has {extra} trailing bytes after its contents")


def _decode_string(raw: memoryview | bytes, what: str) -> str:
    """MQTT UTF-8 string rules (section 1.5.3): well-formed UTF-8, no surrogates, no U+0000."""
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not valid UTF-8 (MQTT-1.5.3-1)") from None
    if "\x00" in text:
        raise ProtocolError(f"{what} contains U+0000 (MQTT-1.5.3-2)")
    return text


def _parse_publish(flags: int, body: memoryview) -> Publish:
    """PUBLISH is the hot path (thousands a second), so it is parsed without a _Reader."""
    qos = (flags >> 1) & 0b11
    if not qos and flags & 0b1000:
        raise ProtocolError("PUBLISH has DUP set with QoS 0 (MQTT-3.3.1-2)")
    size = len(body)
    if size < 2:
        raise ProtocolError("PUBLISH ends inside its topic length (body shorter than contents)")
    topic_end = 2 + ((body[0] << 8) | body[1])
    payload_start = topic_end + 2 if qos else topic_end
    if payload_start > size:
        raise ProtocolError(
            "PUBLISH ends inside its topic or packet id (body shorter than contents)"
        )
    topic = _decode_string(body[2:topic_end], "PUBLISH topic")
    if not topic:
        raise ProtocolError("PUBLISH topic is empty (MQTT-4.7.3-1)")
    if "+" in topic:
        raise ProtocolError("PUBLISH topic contains a wildcard '+' (MQTT-3.3.2-2)")
    if "#" in topic:
        raise ProtocolError("PUBLISH topic contains a wildcard '#' (MQTT-3.3.2-2)")
    packet_id = None
    if qos:
        packet_id = (body[topic_end] << 8) | body[topic_end + 1]
        if packet_id == 0:
            raise ProtocolError("PUBLISH has packet identifier 0 (MQTT-2.3.1-1)")
    return Publish(
        topic,
        bytes(body[payload_start:]),
        qos,
        bool(flags & 0b0001),
        bool(flags & 0b1000),
        packet_id,
    )


def _parse_packet_id_only(ptype: int, body: memoryview) -> int:
    """PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: exactly a non-zero packet id."""
    if len(body) != 2:
        raise ProtocolError(
            f"{_TYPE_NAMES[ptype]} has a body of {len(body)} bytes, must be exactly 2"
        )
    packet_id = (body[0] << 8) | body[1]
    if packet_id == 0:
        raise ProtocolError(f"{_TYPE_NAMES[ptype]} has packet identifier 0 (MQTT-2.3.1-1)")
    return packet_id


def _parse_connect(r: _Reader) -> Connect:
    """CONNECT (section 3.1). The protocol is checked before anything else so that a client
    speaking another version gets CONNACK 1 rather than a complaint about its layout."""
    name = bytes(r._take(r.u16("protocol name length"), "protocol name"))
    level = r.u8("protocol level")
    if name not in _PROTOCOLS.values():
        shown = name.decode("utf-8", "replace")
        raise UnsupportedProtocol(f"CONNECT protocol name {shown!r} is not MQTT (MQTT-3.1.2-1)")
    if _PROTOCOLS.get(level) != name:
        raise UnsupportedProtocol(
            f"CONNECT protocol level {level} with name {name.decode()!r} is not supported; "
            "only 4 (MQTT 3.1.1) and 3 (MQIsdp 3.1) are (MQTT-3.1.2-2)"
        )
    flags = r.u8("connect flags")
    keepalive = r.u16("keep alive")
    if flags & 0x01:
        raise ProtocolError("CONNECT reserved flag bit 0 is set (MQTT-3.1.2-3)")
    clean_session = bool(flags & 0x02)
    will_flag = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0b11
    will_retain = bool(flags & 0x20)
    has_password = bool(flags & 0x40)
    has_username = bool(flags & 0x80)
    if will_qos == 3:
        raise ProtocolError("CONNECT will QoS is 3, which is reserved (MQTT-3.1.2-14)")
    if not will_flag and (will_qos or will_retain):
        raise ProtocolError(
            "CONNECT will QoS or will retain is set without the will flag (MQTT-3.1.2-13/15)"
        )
    if has_password and not has_username:
        raise ProtocolError(
            "CONNECT has the password flag without the username flag (MQTT-3.1.2-22)"
        )
    client_id = r.string("client id")
    if not client_id and not clean_session:
        raise ProtocolError("CONNECT has an empty client id with clean session 0 (MQTT-3.1.3-7)")
    will = None
    if will_flag:
        will_topic = r.string("will topic")
        try:
            topics.validate_topic(will_topic)
        except ValueError as exc:
            raise ProtocolError(f"CONNECT will {exc}") from None
        will = Will(will_topic, r.binary("will message"), will_qos, will_retain)
    username = r.string("user name") if has_username else None
    password = r.binary("password") if has_password else None
    r.finish()
    return Connect(client_id, username, password, keepalive, clean_session, will, level)


def _parse_connack(r: _Reader) -> ConnAck:
    """CONNACK (section 3.2): acknowledge flags with only bit 0 defined, then a return code."""
    ack_flags = r.u8("acknowledge flags")
    code = r.u8("return code")
    r.finish()
    if ack_flags & 0xFE:
        raise ProtocolError("CONNACK reserved acknowledge flag bits are set (MQTT-3.2.2-1)")
    if code > CONNACK_NOT_AUTHORIZED:
        raise ProtocolError(f"CONNACK return code {code} is reserved")
    session_present = bool(ack_flags & 0x01)
    if session_present and code != CONNACK_ACCEPTED:
        raise ProtocolError(
            "CONNACK has session present with a non-zero return code (MQTT-3.2.2-4)"
        )
    return ConnAck(session_present, code)


def _parse_subscribe(r: _Reader) -> Subscribe:
    """SUBSCRIBE (section 3.8): packet id, then one or more (filter, requested QoS) pairs."""
    packet_id = r.packet_id()
    pairs: list[tuple[str, int]] = []
    while r.remaining():
        topic_filter = _read_filter(r)
        options = r.u8("requested QoS")
        if options & 0xFC:
            raise ProtocolError(
                f"SUBSCRIBE requested QoS byte {options:#04x} has reserved bits set (MQTT-3.8.3-4)"
            )
        if options > 2:
            raise ProtocolError(f"SUBSCRIBE requested QoS {options} is over 2 (MQTT-3.8.3-4)")
        pairs.append((topic_filter, options))
    if not pairs:
        raise ProtocolError("SUBSCRIBE has no topic filters (MQTT-3.8.3-3)")
    return Subscribe(packet_id, tuple(pairs))


def _parse_suback(r: _Reader) -> SubAck:
    """SUBACK (section 3.9): packet id, then one return code per requested filter."""
    packet_id = r.packet_id()
    codes = tuple(r.rest())
    if not codes:
        raise ProtocolError("SUBACK has no return codes")
    for code in codes:
        if code not in _SUBACK_CODES:
            raise ProtocolError(f"SUBACK return code {code:#04x} is reserved (section 3.9.3)")
    return SubAck(packet_id, codes)


def _parse_unsubscribe(r: _Reader) -> Unsubscribe:
    """UNSUBSCRIBE (section 3.10): packet id, then one or more topic filters."""
    packet_id = r.packet_id()
    filters: list[str] = []
    while r.remaining():
        filters.append(_read_filter(r))
    if not filters:
        raise ProtocolError("UNSUBSCRIBE has no topic filters (MQTT-3.10.3-2)")
    return Unsubscribe(packet_id, tuple(filters))


def _read_filter(r: _Reader) -> str:
    topic_filter = r.string("topic filter")
    try:
        topics.validate_filter(topic_filter)
    except ValueError as exc:
        raise ProtocolError(f"{r.what} {exc}") from None
    return topic_filter


_ID_ONLY = {
    _PUBACK: PubAck,
    _PUBREC: PubRec,
    _PUBREL: PubRel,
    _PUBCOMP: PubComp,
    _UNSUBACK: UnsubAck,
}
_EMPTY: dict[int, Packet] = {
    _PINGREQ: _PINGREQ_PACKET,
    _PINGRESP: _PINGRESP_PACKET,
    _DISCONNECT: _DISCONNECT_PACKET,
}
_BODY_PARSERS = {
    _CONNECT: _parse_connect,
    _CONNACK: _parse_connack,
    _SUBSCRIBE: _parse_subscribe,
    _SUBACK: _parse_suback,
    _UNSUBSCRIBE: _parse_unsubscribe,
}


# -- encoding -------------------------------------------------------------------------------------


def remaining_length_bytes(n: int) -> bytes:
    """The variable-length "remaining length" of a fixed header (section 2.2.3): 7 bits a byte,
    least significant group first, high bit set on every byte but the last. Two or three are
    made per relayed message, nearly all under 16 KiB: those are cut from two small tables."""
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]
    if 0x80 <= n < 0x4000:
        return _CONTINUED[n & 0x7F] + _ONE_BYTE[n >> 7]
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise LocalProtocolError(
            f"remaining length {n} is outside 0..{MAX_REMAINING_LENGTH} (section 2.2.3)"
        )
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))
_CONTINUED = tuple(bytes((n | 0x80,)) for n in range(0x80))


def encode(packet: Packet) -> bytes:
    """Serialize one packet. Raises LocalProtocolError if the packet breaks a spec rule, so a bad
    packet is caught here rather than by the peer closing the connection."""
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise LocalProtocolError(f"cannot encode {type(packet).__name__}: not an MQTT packet")
    return encoder(packet)


def _frame(first: int, *parts: bytes) -> bytes:
    """Prefix body parts with the fixed header."""
    body_len = sum(len(p) for p in parts)
    return b"".join((bytes((first,)), remaining_length_bytes(body_len), *parts))


def _u16(value: int, what: str) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= _MAX_UINT16:
        raise LocalProtocolError(f"{what} {value!r} is not in 0..65535")
    return value.to_bytes(2, "big")


def _packet_id(value: int | None, what: str) -> bytes:
    if not isinstance(value, int) or not 1 <= value <= _MAX_UINT16:
        raise LocalProtocolError(f"{what} packet id {value!r} is not in 1..65535 (MQTT-2.3.1-1)")
    return value.to_bytes(2, "big")


def _string(text: str, what: str) -> bytes:
    """An MQTT UTF-8 string: 16-bit length, then the bytes (section 1.5.3)."""
    if not isinstance(text, str):
        raise LocalProtocolError(f"{what} must be str, not {type(text).__name__}")
    if "\x00" in text:
        raise LocalProtocolError(f"{what} contains U+0000 (MQTT-1.5.3-2)")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"{what} contains a lone surrogate (MQTT-1.5.3-1)") from None
    return _binary(raw, what)


def _binary(data: bytes, what: str) -> bytes:
    """Binary data with a 16-bit length prefix (passwords, will messages)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"{what} must be bytes, not {type(data).__name__}")
    if len(data) > _MAX_UINT16:
        raise LocalProtocolError(f"{what} is {len(data)} bytes, over the limit of 65535")
    return len(data).to_bytes(2, "big") + bytes(data)


def _check_qos(qos: int, what: str) -> None:
    if type(qos) is not int or not 0 <= qos <= 2:
        raise LocalProtocolError(f"{what} QoS {qos!r} is not 0, 1 or 2")


def _topic_name(topic: str, what: str) -> bytes:
    raw = _string(topic, what)
    try:
        topics.validate_topic(topic)
    except ValueError as exc:
        raise LocalProtocolError(f"{what}: {exc}") from None
    return raw


def _topic_filter(topic_filter: str, what: str) -> bytes:
    raw = _string(topic_filter, what)
    try:
        topics.validate_filter(topic_filter)
    except ValueError as exc:
        raise LocalProtocolError(f"{what}: {exc}") from None
    return raw


def _encode_connect(p: Connect) -> bytes:
    name = _PROTOCOLS.get(p.protocol_level)
    if name is None:
        raise LocalProtocolError(f"CONNECT protocol level {p.protocol_level!r} is not 3 or 4")
    if not p.client_id and not p.clean_session:
        raise LocalProtocolError(
            "CONNECT with an empty client id needs clean_session (MQTT-3.1.3-7)"
        )
    if p.password is not None and p.username is None:
        raise LocalProtocolError("CONNECT password without username (MQTT-3.1.2-22)")
    flags = 0x02 if p.clean_session else 0
    parts = [_string(p.client_id, "CONNECT client id")]
    if p.will is not None:
        _check_qos(p.will.qos, "CONNECT will")
        flags |= 0x04 | (p.will.qos << 3) | (0x20 if p.will.retain else 0)
        parts.append(_topic_name(p.will.topic, "CONNECT will topic"))
        parts.append(_binary(p.will.payload, "CONNECT will message"))
    if p.username is not None:
        flags |= 0x80
        parts.append(_string(p.username, "CONNECT user name"))
    if p.password is not None:
        flags |= 0x40
        parts.append(_binary(p.password, "CONNECT password"))
    header = _binary(name, "protocol name") + bytes((p.protocol_level, flags))
    header += _u16(p.keepalive, "CONNECT keep alive")
    return _frame(_CONNECT << 4, header, *parts)


def _encode_connack(p: ConnAck) -> bytes:
    if not 0 <= p.return_code <= CONNACK_NOT_AUTHORIZED:
        raise LocalProtocolError(f"CONNACK return code {p.return_code!r} is not 0..5")
    if p.session_present and p.return_code != CONNACK_ACCEPTED:
        raise LocalProtocolError("CONNACK session present with a refusal (MQTT-3.2.2-4)")
    return bytes((_CONNACK << 4, 2, 1 if p.session_present else 0, p.return_code))


def _encode_publish(p: Publish) -> bytes:
    _check_qos(p.qos, "PUBLISH")
    if p.qos == 0 and p.dup:
        raise LocalProtocolError("PUBLISH QoS 0 must not have DUP set (MQTT-3.3.1-2)")
    first = (_PUBLISH << 4) | (p.qos << 1) | (0x08 if p.dup else 0) | (0x01 if p.retain else 0)
    topic = _topic_name(p.topic, "PUBLISH topic")
    if not isinstance(p.payload, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"PUBLISH payload must be bytes, not {type(p.payload).__name__}")
    if p.qos == 0:
        if p.packet_id is not None:
            raise LocalProtocolError("PUBLISH QoS 0 must not have a packet id (MQTT-2.3.1-5)")
        return _frame(first, topic, p.payload)
    return _frame(first, topic, _packet_id(p.packet_id, "PUBLISH"), p.payload)


def _encode_id_only(ptype: int):
    """Encoder for the 4-byte packets that carry nothing but a packet id."""
    first = (ptype << 4) | _REQUIRED_FLAGS[ptype]
    name = _TYPE_NAMES[ptype]

    def encode_id_only(p) -> bytes:
        return bytes((first, 2)) + _packet_id(p.packet_id, name)

    return encode_id_only


def _encode_subscribe(p: Subscribe) -> bytes:
    if not p.topics:
        raise LocalProtocolError("SUBSCRIBE needs at least one topic filter (MQTT-3.8.3-3)")
    parts = [_packet_id(p.packet_id, "SUBSCRIBE")]
    for topic_filter, qos in p.topics:
        _check_qos(qos, "SUBSCRIBE requested")
        parts.append(_topic_filter(topic_filter, "SUBSCRIBE topic filter"))
        parts.append(bytes((qos,)))
    return _frame((_SUBSCRIBE << 4) | 0b0010, *parts)


def _encode_suback(p: SubAck) -> bytes:
    if not p.return_codes:
        raise LocalProtocolError("SUBACK needs at least one return code")
    for code in p.return_codes:
        if code not in _SUBACK_CODES:
            raise LocalProtocolError(f"SUBACK return code {code!r} is not 0, 1, 2 or 0x80")
    return _frame(_SUBACK << 4, _packet_id(p.packet_id, "SUBACK"), bytes(p.return_codes))


def _encode_unsubscribe(p: Unsubscribe) -> bytes:
    if not p.topics:
        raise LocalProtocolError("UNSUBSCRIBE needs at least one topic filter (MQTT-3.10.3-2)")
    parts = [_packet_id(p.packet_id, "UNSUBSCRIBE")]
    parts += [_topic_filter(f, "UNSUBSCRIBE topic filter") for f in p.topics]
    return _frame((_UNSUBSCRIBE << 4) | 0b0010, *parts)


_ENCODERS = {
    Connect: _encode_connect,
    ConnAck: _encode_connack,
    Publish: _encode_publish,
    PubAck: _encode_id_only(_PUBACK),
    PubRec: _encode_id_only(_PUBREC),
    PubRel: _encode_id_only(_PUBREL),
    PubComp: _encode_id_only(_PUBCOMP),
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _encode_id_only(_UNSUBACK),
    PingReq: lambda p: bytes((_PINGREQ << 4, 0)),
    PingResp: lambda p: bytes((_PINGRESP << 4, 0)),
    Disconnect: lambda p: bytes((_DISCONNECT << 4, 0)),
}
