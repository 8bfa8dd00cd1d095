"""The MQTT 3.1.1 codec: golden bytes from the spec, round trips, and every refusal."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt import codec
from gateway.mqtt.codec import (
    CONNACK_ACCEPTED,
    CONNACK_BAD_PROTOCOL,
    CONNACK_NOT_AUTHORIZED,
    SUBACK_FAILURE,
    ConnAck,
    Connect,
    Decoder,
    Disconnect,
    LocalProtocolError,
    PacketTooLarge,
    PingReq,
    PingResp,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    UnsupportedProtocol,
    Will,
    encode,
    remaining_length_bytes,
)
from tests.support.imports import IO_MODULES, top_level_imports

SAMPLES = [
    Connect("dev1"),
    Connect(
        "dev1",
        username="user",
        password=b"pw",
        keepalive=0,
        clean_session=False,
        will=Will("w/t", b"bye", 2, False),
    ),
    Connect("", username="hub.example.net/dev1/?api-version=2021-04-12", keepalive=65535),
    Connect("old", protocol_level=3, will=Will("x", b"", 0, True)),
    ConnAck(False, CONNACK_ACCEPTED),
    ConnAck(True, CONNACK_ACCEPTED),
    ConnAck(False, CONNACK_NOT_AUTHORIZED),
    Publish("a/b", b"hello"),
    Publish("a/b", b"", qos=1, packet_id=1),
    Publish("devices/d1/messages/events/", b"\x00" * 1000, qos=1, retain=True, packet_id=65535),
    Publish("é/ü/世界", b"x", qos=2, dup=True, packet_id=7),
    Publish("/", b"y" * 20000, retain=True),
    PubAck(1),
    PubRec(2),
    PubRel(3),
    PubComp(65535),
    Subscribe(1, (("a/+", 1),)),
    Subscribe(9, (("#", 0), ("$iothub/twin/res/#", 1), ("a/+/c", 2))),
    SubAck(1, (0,)),
    SubAck(9, (0, 1, 2, SUBACK_FAILURE)),
    Unsubscribe(4, ("a/b",)),
    Unsubscribe(5, ("#", "+/x")),
    UnsubAck(4),
    PingReq(),
    PingResp(),
    Disconnect(),
]


def decode_one(data: bytes, **kwargs) -> codec.Packet:
    packets = Decoder(**kwargs).feed(data)
    assert len(packets) == 1
    return packets[0]


def refused(data: bytes, *words: str, **kwargs) -> ProtocolError:
    """Feed `data`, expect a ProtocolError whose reason mentions every one of `words`."""
    with pytest.raises(ProtocolError) as info:
        Decoder(**kwargs).feed(data)
    for word in words:
        assert word.lower() in info.value.reason.lower(), info.value.reason
    assert str(info.value) == info.value.reason
    return info.value


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# -- golden bytes (derived by hand from the 3.1.1 spec) -----------------------------------------

GOLDEN = [
    (
        # Fixed header 0x10, remaining length 36. Variable header: "MQTT", level 4,
        # flags 0xEE = user(0x80)|password(0x40)|will retain(0x20)|will QoS 1(0x08)|
        # will(0x04)|clean session(0x02), keep alive 60. Payload: client id, will topic,
        # will message, user name, password, each with a 2-byte length.
        Connect("dev1", "user", b"pw", 60, True, Will("w/t", b"bye", 1, True)),
        "10 24 0004 4d515454 04 ee 003c 0004 64657631 0003 772f74 0003 627965"
        " 0004 75736572 0002 7077",
    ),
    (
        # MQTT 3.1 CONNECT: "MQIsdp", level 3, clean session only.
        Connect("c", keepalive=10, protocol_level=3),
        "10 0f 0006 4d5149736470 03 02 000a 0001 63",
    ),
    (
        # 0x32 = PUBLISH(3) << 4 | QoS 1 << 1; topic "a/b", packet id 10, payload "hi".
        Publish("a/b", b"hi", qos=1, packet_id=10),
        "32 09 0003 612f62 000a 6869",
    ),
    (
        # 0x3b = PUBLISH | DUP 0x08 | QoS 1 0x02 | RETAIN 0x01.
        Publish("t", b"", qos=1, retain=True, dup=True, packet_id=258),
        "3b 05 0001 74 0102",
    ),
    (Publish("t", b"x"), "30 04 0001 74 78"),
    (
        # 0x82 = SUBSCRIBE(8) << 4 | reserved 0b0010; id 1; "a/+" QoS 1, "#" QoS 0.
        Subscribe(1, (("a/+", 1), ("#", 0))),
        "82 0c 0001 0003 612f2b 01 0001 23 00",
    ),
    (PubAck(10), "40 02 000a"),
    (PubRec(10), "50 02 000a"),
    (PubRel(10), "62 02 000a"),
    (PubComp(10), "70 02 000a"),
    (ConnAck(True, 0), "20 02 01 00"),
    (ConnAck(False, 5), "20 02 00 05"),
    (SubAck(1, (1, 0x80)), "90 04 0001 01 80"),
    (Unsubscribe(2, ("a",)), "a2 05 0002 0001 61"),
    (UnsubAck(2), "b0 02 0002"),
    (PingReq(), "c0 00"),
    (PingResp(), "d0 00"),
    (Disconnect(), "e0 00"),
]


@pytest.mark.parametrize(("packet", "wire"), GOLDEN, ids=lambda x: type(x).__name__)
def test_golden_encode(packet: codec.Packet, wire: str) -> None:
    assert encode(packet) == h(wire)


@pytest.mark.parametrize(("packet", "wire"), GOLDEN, ids=lambda x: type(x).__name__)
def test_golden_decode(packet: codec.Packet, wire: str) -> None:
    assert decode_one(h(wire)) == packet


@pytest.mark.parametrize(
    ("n", "wire"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8001"),
        (16383, "ff7f"),
        (16384, "808001"),
        (2097151, "ffff7f"),
        (2097152, "80808001"),
        (268435455, "ffffff7f"),
    ],
)
def test_remaining_length_bytes(n: int, wire: str) -> None:
    assert remaining_length_bytes(n) == h(wire)


def test_remaining_length_out_of_range() -> None:
    for n in (-1, 268435456):
        with pytest.raises(LocalProtocolError):
            remaining_length_bytes(n)


def test_multi_byte_remaining_length_decodes() -> None:
    packet = Publish("t", b"z" * 200)
    wire = encode(packet)
    assert wire[:3] == h("30 cb 01")  # 203 = 0x4b + 1 * 128
    assert decode_one(wire) == packet


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("packet", SAMPLES, ids=lambda p: type(p).__name__)
def test_round_trip(packet: codec.Packet) -> None:
    assert decode_one(encode(packet)) == packet


def test_round_trip_one_byte_at_a_time() -> None:
    wire = b"".join(encode(p) for p in SAMPLES)
    decoder = Decoder()
    out = []
    for i in range(len(wire)):
        out += decoder.feed(wire[i : i + 1])
    assert out == SAMPLES


def test_round_trip_all_in_one_chunk() -> None:
    wire = b"".join(encode(p) for p in SAMPLES) * 3
    assert Decoder().feed(wire) == SAMPLES * 3


def test_round_trip_random_chunks() -> None:
    rng = random.Random(1234)
    wire = b"".join(encode(p) for p in SAMPLES * 5)
    decoder = Decoder()
    out: list[codec.Packet] = []
    pos = 0
    while pos < len(wire):
        step = rng.randint(0, 3000)
        out += decoder.feed(wire[pos : pos + step])
        pos += step
    assert out == SAMPLES * 5


def test_partial_then_rest_keeps_state() -> None:
    wire = encode(Publish("a", b"12345", qos=1, packet_id=3)) + encode(PingReq())
    decoder = Decoder()
    assert decoder.feed(wire[:4]) == []
    assert decoder.feed(b"") == []
    assert decoder.feed(wire[4:-1]) == [Publish("a", b"12345", qos=1, packet_id=3)]
    assert decoder.feed(wire[-1:]) == [PingReq()]


def test_client_and_server_talk_through_bytes() -> None:
    """A client-side and a server-side decoder, wired together only by encode()."""
    to_server, to_client = Decoder(), Decoder()
    client_out = [
        Connect("d1", "u", b"p"),
        Subscribe(1, (("c2d/#", 1),)),
        Publish("e", b"1", 1, packet_id=2),
    ]
    got = to_server.feed(b"".join(map(encode, client_out)))
    assert got == client_out
    server_out = [
        ConnAck(False, 0),
        SubAck(1, (1,)),
        PubAck(2),
        Publish("c2d/x", b"m", 1, packet_id=1),
    ]
    assert to_client.feed(b"".join(map(encode, server_out))) == server_out


def test_decoded_payload_is_bytes_and_survives_buffer_reuse() -> None:
    decoder = Decoder()
    (first,) = decoder.feed(encode(Publish("t", b"abc")))
    decoder.feed(encode(Publish("t", b"xyz")))
    assert type(first.payload) is bytes and first.payload == b"abc"


# -- hypothesis ---------------------------------------------------------------------------------

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_name_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#")
_strings = st.text(_chars, max_size=40)
_topic_names = st.text(_name_chars, min_size=1, max_size=40)
_level = st.one_of(st.just("+"), st.text(_name_chars.filter(lambda c: c != "/"), max_size=8))
_filters = st.builds(
    lambda levels, hash_: "/".join(levels + (["#"] if hash_ else [])),
    st.lists(_level, min_size=1, max_size=5),
    st.booleans(),
).filter(bool)
_ids = st.integers(1, 65535)
_qos = st.integers(0, 2)


@st.composite
def _publishes(draw) -> Publish:
    qos = draw(_qos)
    return Publish(
        draw(_topic_names),
        draw(st.binary(max_size=300)),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(_ids) if qos else None,
    )


@st.composite
def _connects(draw) -> Connect:
    username = draw(st.none() | _strings)
    password = draw(st.none() | st.binary(max_size=50)) if username is not None else None
    clean = draw(st.booleans())
    client_id = draw(_strings)
    if not client_id:
        clean = True
    will = draw(
        st.none() | st.builds(Will, _topic_names, st.binary(max_size=50), _qos, st.booleans())
    )
    level = draw(st.sampled_from([3, 4]))
    return Connect(client_id, username, password, draw(st.integers(0, 65535)), clean, will, level)


_packets = st.one_of(
    _connects(),
    _publishes(),
    st.builds(ConnAck, st.just(True), st.just(0)),
    st.builds(ConnAck, st.just(False), st.integers(0, 5)),
    st.builds(PubAck, _ids),
    st.builds(PubRec, _ids),
    st.builds(PubRel, _ids),
    st.builds(PubComp, _ids),
    st.builds(UnsubAck, _ids),
    st.builds(
        Subscribe, _ids, st.lists(st.tuples(_filters, _qos), min_size=1, max_size=4).map(tuple)
    ),
    st.builds(
        SubAck,
        _ids,
        st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(Unsubscribe, _ids, st.lists(_filters, min_size=1, max_size=4).map(tuple)),
    st.just(PingReq()),
    st.just(PingResp()),
    st.just(Disconnect()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_packets, min_size=1, max_size=8), st.data())
def test_property_round_trip(packets: list[codec.Packet], data: st.DataObject) -> None:
    wire = b"".join(encode(p) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = Decoder()
    out: list[codec.Packet] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        out += decoder.feed(wire[start:cut])
        start = cut
    assert out == packets


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_property_garbage_only_raises_protocol_error(garbage: bytes) -> None:
    """Whatever a peer sends, the decoder answers with packets or ProtocolError, nothing else;
    and whatever it accepts, we can encode back to the same packet."""
    try:
        packets = Decoder().feed(garbage)
    except ProtocolError:
        return
    for packet in packets:
        assert decode_one(encode(packet)) == packet


# -- size limit ----------------------------------------------------------------------------------


def test_too_large_from_fixed_header_alone() -> None:
    header = b"\x30" + remaining_length_bytes(200_000_000)
    assert len(header) == 5
    decoder = Decoder(max_packet_bytes=1024)
    with pytest.raises(PacketTooLarge) as info:
        decoder.feed(header)
    assert info.value.size == 200_000_005
    assert info.value.limit == 1024
    assert "1024" in info.value.reason and "200000005" in info.value.reason
    assert isinstance(info.value, ProtocolError)


def test_too_large_with_default_limit() -> None:
    with pytest.raises(PacketTooLarge):
        Decoder().feed(b"\x30" + remaining_length_bytes(268_435_455))


def test_too_large_before_remaining_length_is_complete() -> None:
    # 0x30 0xff: at least 127 + 3 bytes already, whatever follows.
    with pytest.raises(PacketTooLarge):
        Decoder(max_packet_bytes=100).feed(b"\x30\xff")


def test_size_limit_boundary() -> None:
    wire = encode(Publish("t", b"x" * 100))
    assert decode_one(wire, max_packet_bytes=len(wire)) == Publish("t", b"x" * 100)
    with pytest.raises(PacketTooLarge) as info:
        Decoder(max_packet_bytes=len(wire) - 1).feed(wire)
    assert info.value.size == len(wire)


def test_too_large_after_good_packets_in_same_stream() -> None:
    decoder = Decoder(max_packet_bytes=64)
    assert decoder.feed(encode(PingReq())) == [PingReq()]
    with pytest.raises(PacketTooLarge):
        decoder.feed(b"\x30" + remaining_length_bytes(65))


# -- dead after error ----------------------------------------------------------------------------


def test_decoder_is_dead_after_protocol_error() -> None:
    decoder = Decoder()
    with pytest.raises(ProtocolError) as first:
        decoder.feed(h("36 00"))
    for data in (encode(PingReq()), b""):
        with pytest.raises(ProtocolError) as again:
            decoder.feed(data)
        assert again.value is first.value


# -- refusals: fixed header ----------------------------------------------------------------------


def test_remaining_length_over_four_bytes() -> None:
    refused(h("30 ff ff ff ff 01"), "remaining length", "4 bytes")


@pytest.mark.parametrize(
    ("first", "name"),
    [
        (0x80, "SUBSCRIBE"),
        (0x83, "SUBSCRIBE"),
        (0xA0, "UNSUBSCRIBE"),
        (0x60, "PUBREL"),
        (0x11, "CONNECT"),
        (0x22, "CONNACK"),
        (0x42, "PUBACK"),
        (0x58, "PUBREC"),
        (0x71, "PUBCOMP"),
        (0x92, "SUBACK"),
        (0xB1, "UNSUBACK"),
        (0xC2, "PINGREQ"),
        (0xD1, "PINGRESP"),
        (0xE2, "DISCONNECT"),
    ],
)
def test_reserved_flag_bits(first: int, name: str) -> None:
    # Refused from the first byte alone, without waiting for a body.
    refused(bytes((first,)), name, "flags")


@pytest.mark.parametrize("first", [0x00, 0xF0])
def test_reserved_packet_types(first: int) -> None:
    refused(bytes((first, 0)), "reserved")


def test_publish_qos_3() -> None:
    refused(h("36 04 0001 74 00"), "QoS 3")


def test_publish_dup_with_qos_0() -> None:
    refused(h("38 03 0001 74"), "DUP", "QoS 0")


# -- refusals: packet ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "name"),
    [
        ("32 05 0001 74 0000", "PUBLISH"),
        ("40 02 0000", "PUBACK"),
        ("50 02 0000", "PUBREC"),
        ("62 02 0000", "PUBREL"),
        ("70 02 0000", "PUBCOMP"),
        ("82 06 0000 0001 61 00", "SUBSCRIBE"),
        ("90 03 0000 00", "SUBACK"),
        ("a2 05 0000 0001 61", "UNSUBSCRIBE"),
        ("b0 02 0000", "UNSUBACK"),
    ],
)
def test_packet_id_zero(wire: str, name: str) -> None:
    refused(h(wire), name, "packet identifier 0")


# -- refusals: PUBLISH topic and strings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "words"),
    [
        (b"", ("topic", "empty")),
        (b"a/+", ("topic", "wildcard '+'")),
        (b"+", ("topic", "wildcard '+'")),
        (b"a/#", ("topic", "wildcard '#'")),
        (b"a\x00b", ("topic", "U+0000")),
    ],
)
def test_publish_bad_topic(topic: bytes, words: tuple[str, ...]) -> None:
    body = len(topic).to_bytes(2, "big") + topic + b"payload"
    refused(b"\x30" + remaining_length_bytes(len(body)) + body, *words)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff",  # never valid in UTF-8
        b"\xc0\xaf",  # overlong encoding of '/'
        b"\xed\xa0\x80",  # UTF-16 surrogate D800 (MQTT-1.5.3-1)
        b"a\xe2\x82",  # truncated sequence
    ],
)
def test_publish_topic_not_utf8(raw: bytes) -> None:
    body = len(raw).to_bytes(2, "big") + raw
    refused(b"\x30" + remaining_length_bytes(len(body)) + body, "PUBLISH topic", "UTF-8")


def _connect_body(
    flags: int = 0x02,
    client_id: bytes = b"c",
    rest: bytes = b"",
    name: bytes = b"MQTT",
    level: int = 4,
) -> bytes:
    body = (
        len(name).to_bytes(2, "big")
        + name
        + bytes((level, flags))
        + b"\x00\x3c"
        + len(client_id).to_bytes(2, "big")
        + client_id
        + rest
    )
    return b"\x10" + remaining_length_bytes(len(body)) + body


def test_connect_helper_is_sound() -> None:
    assert decode_one(_connect_body()) == Connect("c")


def test_connect_client_id_not_utf8() -> None:
    refused(_connect_body(client_id=b"\xfe"), "client id", "UTF-8")


def test_connect_username_not_utf8() -> None:
    refused(_connect_body(flags=0x82, rest=h("0002 c328")), "user name", "UTF-8")


def test_connect_client_id_with_nul() -> None:
    refused(_connect_body(client_id=b"a\x00"), "client id", "U+0000")


# -- refusals: CONNECT ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "level", "words"),
    [
        (b"MQTX", 4, ("protocol name", "MQTX")),
        (b"mqtt", 4, ("protocol name",)),
        (b"MQTT", 5, ("level 5",)),
        (b"MQTT", 3, ("level 3",)),
        (b"MQIsdp", 4, ("level 4",)),
    ],
)
def test_connect_unsupported_protocol(name: bytes, level: int, words: tuple[str, ...]) -> None:
    exc = refused(_connect_body(name=name, level=level), *words)
    assert isinstance(exc, UnsupportedProtocol)
    assert exc.return_code == CONNACK_BAD_PROTOCOL


def test_connect_mqtt5_refused_as_unsupported_before_its_properties() -> None:
    # An MQTT 5 CONNECT has a property length after keep alive; we must not trip over it.
    body = h("0004 4d515454 05 02 003c 00 0001 63")
    with pytest.raises(UnsupportedProtocol):
        Decoder().feed(b"\x10" + bytes((len(body),)) + body)


def test_connect_mqisdp_level_3_accepted() -> None:
    assert decode_one(_connect_body(name=b"MQIsdp", level=3)).protocol_level == 3


def test_connect_reserved_flag() -> None:
    refused(_connect_body(flags=0x03), "reserved flag")


def test_connect_password_without_username() -> None:
    refused(_connect_body(flags=0x42, rest=h("0002 7077")), "password", "without the username")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (0x02 | 0x08, ("will QoS", "without the will flag")),  # will QoS 1, no will flag
        (0x02 | 0x20, ("will retain", "without the will flag")),  # will retain, no will flag
        (0x02 | 0x04 | 0x18, ("will QoS is 3",)),  # will flag with QoS 3
    ],
)
def test_connect_will_flags_inconsistent(flags: int, words: tuple[str, ...]) -> None:
    refused(_connect_body(flags=flags, rest=h("0001 74 0000")), *words)


def test_connect_will_topic_with_wildcard() -> None:
    refused(_connect_body(flags=0x06, rest=h("0003 612f23 0000")), "will", "wildcard '#'")


def test_connect_empty_client_id_without_clean_session() -> None:
    refused(_connect_body(flags=0x00, client_id=b""), "empty client id", "clean session")


def test_connect_empty_client_id_with_clean_session_is_fine() -> None:
    assert decode_one(_connect_body(flags=0x02, client_id=b"")) == Connect("")


def test_connect_trailing_bytes() -> None:
    refused(_connect_body(rest=b"\x00"), "CONNECT", "trailing")


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        ("10 02 0004", "protocol name"),
        ("10 06 0004 4d515454", "protocol level"),
        ("10 0d 0004 4d515454 04 02 003c 0005 63", "client id"),
        ("10 0d 0004 4d515454 04 86 003c 0001 63", "will topic"),  # will + user flags, no data
        ("10 10 0004 4d515454 04 82 003c 0001 63 0002 75", "user name"),
    ],
)
def test_connect_body_shorter_than_contents(wire: str, field: str) -> None:
    refused(h(wire), "CONNECT", field, "shorter")


# -- refusals: SUBSCRIBE / UNSUBSCRIBE -----------------------------------------------------------


def test_subscribe_without_topics() -> None:
    refused(h("82 02 0001"), "SUBSCRIBE", "no topic filters")


def test_subscribe_qos_over_2() -> None:
    refused(h("82 06 0001 0001 61 03"), "SUBSCRIBE", "QoS 3", "over 2")


def test_subscribe_reserved_qos_bits() -> None:
    refused(h("82 06 0001 0001 61 41"), "SUBSCRIBE", "reserved bits")


def test_subscribe_missing_qos_byte() -> None:
    refused(h("82 05 0001 0001 61"), "SUBSCRIBE", "requested QoS", "shorter")


@pytest.mark.parametrize(
    ("filter_", "words"),
    [
        (b"a/#/b", ("'#'", "last level")),
        (b"a+", ("'+'", "whole level")),
        (b"", ("empty",)),
        (b"\xff", ("UTF-8",)),
    ],
)
def test_subscribe_invalid_filter(filter_: bytes, words: tuple[str, ...]) -> None:
    body = b"\x00\x01" + len(filter_).to_bytes(2, "big") + filter_ + b"\x00"
    refused(b"\x82" + bytes((len(body),)) + body, "SUBSCRIBE", *words)


def test_unsubscribe_without_topics() -> None:
    refused(h("a2 02 0001"), "UNSUBSCRIBE", "no topic filters")


def test_unsubscribe_invalid_filter() -> None:
    refused(h("a2 06 0001 0002 2361"), "UNSUBSCRIBE", "'#'")


# -- refusals: bodies of fixed size --------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        ("40 03 0001 00", ("PUBACK", "3 bytes", "exactly 2")),
        ("40 01 00", ("PUBACK", "1 bytes", "exactly 2")),
        ("62 00", ("PUBREL", "0 bytes", "exactly 2")),
        ("b0 04 0001 0001", ("UNSUBACK", "exactly 2")),
        ("c0 01 00", ("PINGREQ", "must be empty")),
        ("d0 01 00", ("PINGRESP", "must be empty")),
        ("e0 02 0000", ("DISCONNECT", "must be empty")),
        ("20 03 00 00 00", ("CONNACK", "trailing")),
        ("20 01 00", ("CONNACK", "return code", "shorter")),
        ("32 04 0001 74 00", ("PUBLISH", "shorter")),
        ("30 01 00", ("PUBLISH", "shorter")),
        ("30 03 0005 61", ("PUBLISH", "shorter")),
    ],
)
def test_body_size_mismatch(wire: str, words: tuple[str, ...]) -> None:
    refused(h(wire), *words)


# -- refusals: packets a broker sends ------------------------------------------------------------


def test_connack_reserved_bits() -> None:
    refused(h("20 02 02 00"), "CONNACK", "reserved")


def test_connack_unknown_return_code() -> None:
    refused(h("20 02 00 06"), "CONNACK", "return code 6")


def test_connack_session_present_with_refusal() -> None:
    refused(h("20 02 01 05"), "session present")


def test_suback_bad_return_code() -> None:
    refused(h("90 03 0001 03"), "SUBACK", "return code")


def test_suback_without_return_codes() -> None:
    refused(h("90 02 0001"), "SUBACK", "no return codes")


# -- error: packets before the bad one in the same chunk -----------------------------------------


def test_error_after_good_packets_in_one_chunk_raises() -> None:
    """A ProtocolError ends the connection, so packets earlier in the same read are dropped
    with it rather than half-processed."""
    with pytest.raises(ProtocolError):
        Decoder().feed(encode(PingReq()) + h("36 00"))


# -- encode refuses what the spec forbids ---------------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "words"),
    [
        (Publish("t", b"", qos=1), "packet id"),
        (Publish("t", b"", qos=2, packet_id=0), "packet id"),
        (Publish("t", b"", qos=1, packet_id=65536), "packet id"),
        (Publish("t", b"", qos=0, packet_id=5), "QoS 0 must not have a packet id"),
        (Publish("t", b"", qos=3, packet_id=5), "QoS 3"),
        (Publish("t", b"", dup=True), "DUP"),
        (Publish("a/+", b""), "wildcard"),
        (Publish("", b""), "empty"),
        (Publish("a" * 65536, b""), "65535"),
        (Publish("\ud800", b""), "surrogate"),
        (Publish("t", "text"), "bytes"),  # type: ignore[arg-type]
        (Connect("c", password=b"p"), "password without username"),
        (Connect("", clean_session=False), "clean_session"),
        (Connect("c", protocol_level=5), "protocol level"),
        (Connect("c", keepalive=70000), "keep alive"),
        (Connect("c", will=Will("w/#", b"", 0, False)), "wildcard"),
        (Connect("c", will=Will("w", b"", 3, False)), "QoS"),
        (Connect("c\x00"), "U+0000"),
        (Connect("c", username="u", password=b"p" * 65536), "65535"),
        (ConnAck(False, 6), "return code"),
        (ConnAck(True, 1), "session present"),
        (PubAck(0), "packet id"),
        (PubRel(None), "packet id"),  # type: ignore[arg-type]
        (Subscribe(1, ()), "at least one"),
        (Subscribe(1, (("a/#/b", 0),)), "last level"),
        (Subscribe(1, (("a", 3),)), "QoS"),
        (SubAck(1, ()), "at least one"),
        (SubAck(1, (3,)), "return code"),
        (Unsubscribe(1, ()), "at least one"),
        (Unsubscribe(0, ("a",)), "packet id"),
    ],
)
def test_encode_refuses(packet: codec.Packet, words: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(packet)
    assert words in str(info.value)


def test_encode_refuses_non_packets() -> None:
    with pytest.raises(LocalProtocolError, match="not an MQTT packet"):
        encode("hello")  # type: ignore[arg-type]


def test_error_classes() -> None:
    assert issubclass(ProtocolError, codec.MQTTError)
    assert issubclass(LocalProtocolError, codec.MQTTError)
    assert not issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(PacketTooLarge, ProtocolError)
    assert issubclass(UnsupportedProtocol, ProtocolError)


def test_codec_does_no_io() -> None:
    """Sans-I/O: the codec must stay importable and testable without sockets or a loop."""
    assert not top_level_imports(codec.__file__) & IO_MODULES


def test_take_buffered_hands_over_the_unfinished_packet_and_empties_the_decoder() -> None:
    whole = codec.encode(codec.PubAck(7))
    unfinished = codec.encode(codec.Publish("t", b"payload", qos=0))[:5]
    decoder = codec.Decoder()
    assert decoder.feed(whole + unfinished) == [codec.PubAck(7)]
    assert decoder.take_buffered() == unfinished
    assert decoder.take_buffered() == b""
    assert decoder.feed(whole) == [codec.PubAck(7)], "it decodes on from an empty buffer"
