"""The uplink's MQTT 5 bytes: what it encodes reads back the same, the telemetry encoder says what
the contract says, and any bytes from a broker either parse or raise MalformedPacket."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import given
from hypothesis import strategies as st

from gateway.mqtt import mqtt5
from gateway.upstream import cloud_contract as contract
from gateway.upstream.message import Message, decode_record, encode_record


def feed_all(data: bytes, chunk: int) -> list:
    reader, out = mqtt5.Reader(), []
    for i in range(0, len(data), chunk):
        out += reader.feed(data[i : i + chunk])
    return out


def test_publish_reads_back_with_its_properties_whatever_the_split():
    props = mqtt5.properties(mqtt5.user_property("k", "v"), mqtt5.user_property("ü", ""),
                             mqtt5.message_expiry(90),
                             bytes((mqtt5.P_CORRELATION,)) + mqtt5.binary(b"\x00\x01"))
    packet = mqtt5.publish(mqtt5.string("a/b"), 513, props, b"x" * 300, retain=True)
    for chunk in (1, 7, len(packet)):
        (got,) = feed_all(packet, chunk)
        assert (got.topic, got.payload, got.qos, got.packet_id, got.retain) == (
            "a/b", b"x" * 300, 1, 513, True)
        assert got.props.user == [("k", "v"), ("ü", "")]
        assert got.props.get(mqtt5.P_MESSAGE_EXPIRY) == 90
        assert got.props.get(mqtt5.P_CORRELATION) == b"\x00\x01"


def test_acks_short_and_long_forms():
    data = b"\x40\x02\x00\x07" + b"\x40\x03\x00\x08\x87" + b"\x40\x04\x00\x09\x10\x00"
    acks = feed_all(data, 3)
    assert [(a.packet_id, a.reasons) for a in acks] == [(7, b""), (8, b"\x87"), (9, b"\x10")]
    suback = b"\x90\x05\x00\x02\x00\x01\x80"
    (ack,) = feed_all(suback, 2)
    assert (ack.kind, ack.packet_id, ack.reasons) == (mqtt5.SUBACK, 2, b"\x01\x80")


def test_a_success_puback_is_its_packet_id_in_each_of_its_three_spellings():
    # the packet id alone, with reason 0 (mosquitto's), with reason 0 and no properties, and
    # with reason 0x10 (no matching subscribers) in both long forms
    data = (b"\x40\x02\x00\x07" + b"\x40\x03\x01\x08\x00" + b"\x40\x04\x00\x09\x00\x00"
            + b"\x40\x03\x00\x0b\x10" + b"\x40\x04\x00\x0c\x10\x00"
            + b"\x40\x03\x00\x0a\x87" + b"\x40\x04\x00\x0d\x91\x00"
            + b"\x40\x07\x00\x0e\x10\x03\x1f\x00\x00")
    for chunk in (1, 3, 4, 5, len(data)):
        reader, out = mqtt5.Reader(), []
        for i in range(0, len(data), chunk):
            out += reader.feed(data[i : i + chunk], acks_as_ids=True)
        assert out[:5] == [7, 264, 9, 11, 12], chunk
        # refusals, and a success with properties, keep their reason code
        assert [(a.packet_id, a.reasons) for a in out[5:]] == [
            (10, b"\x87"), (13, b"\x91"), (14, b"\x10")]


def test_connack_and_disconnect():
    connack = b"\x20\x06\x01\x00\x03\x21\x00\x14"
    (got,) = feed_all(connack, 1)
    assert got.session_present and got.reason == 0
    assert got.props.get(mqtt5.P_RECEIVE_MAXIMUM) == 20
    reason = mqtt5.string("quota")
    disconnect = bytes((0xE0, 2 + len(reason) + 1, 0x97, len(reason) + 1, 0x1F)) + reason
    (bye,) = feed_all(disconnect, 4)
    assert (bye.reason, bye.reason_string) == (0x97, "quota")
    assert mqtt5.reason_name(0x87) == "Not authorized"


def test_connect_carries_will_credentials_and_session_expiry():
    packet = mqtt5.connect("gw", 30, session_expiry=600, username="u", password="p",
                           will=mqtt5.WillMessage("s", b"off"))
    body = packet[2:]
    assert body[:7] == b"\x00\x04MQTT\x05"
    flags = body[7]
    assert flags == 0x80 | 0x40 | 0x20 | 0x08 | 0x04, "user, password, will retain QoS 1, will"
    assert struct.unpack(">H", body[8:10])[0] == 30
    assert body[10:16] == b"\x05\x11" + struct.pack(">I", 600)


def test_telemetry_encoder_says_what_the_contract_says():
    msg = Message("dev-1", 1_000, 61_000, "a=1&b=x%20y&%24.ct=application%2Fjson", b"{}", 3)
    encoder = contract.TelemetryEncoder("site/", "edge-1")
    (got,) = mqtt5.Reader().feed(encoder.publish(513, 42, msg, 2_000))
    assert (got.qos, got.packet_id, got.payload) == (1, 513, b"{}")
    assert got.topic == contract.telemetry_topic("site/", "dev-1")
    assert got.props.user == contract.telemetry_user_properties("edge-1", 42, msg)
    assert got.props.get(mqtt5.P_MESSAGE_EXPIRY) == 59


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(device=_TEXT.filter(bool), properties=_TEXT, payload=st.binary(max_size=300),
       priority=st.integers(0, 9), enqueued=st.integers(0, 2**50), ttl=st.integers(0, 10**9),
       packet_id=st.integers(1, 65535), seq=st.integers(0, 2**63))
def test_a_stored_record_is_encoded_as_its_message_is(device, properties, payload, priority,
                                                       enqueued, ttl, packet_id, seq):
    """The drain's PUBLISH straight from a record is byte for byte the Message's (the second
    reader of the record format may not drift from decode_record)."""
    msg = Message(device, enqueued, enqueued + ttl, properties, payload, priority)
    record = encode_record(msg)
    assert decode_record(record) == msg
    encoder = contract.TelemetryEncoder("site/", "edge-1")
    now = enqueued + 1_000
    want = encoder.publish(packet_id, seq, msg, now)
    assert encoder.publish_record(packet_id, seq, record, now) == want
    assert encoder.publish_record(packet_id, seq, record, now) == want, "from its caches too"


def test_the_encoders_caches_stay_bounded():
    """A child that names a new device or property bag in every message cannot grow them."""
    encoder = contract.TelemetryEncoder("site/", "edge-1")
    for i in range(encoder.CACHE_LIMIT + 10):
        record = encode_record(Message(f"d{i}", 1_000, 61_000, f"k={i}", b"{}"))
        (got,) = mqtt5.Reader().feed(encoder.publish_record(1, i, record, 2_000))
        assert got.topic == contract.telemetry_topic("site/", f"d{i}")
    caches = (encoder._topics, encoder._bags, encoder._record_topics, encoder._record_bags)
    assert all(0 < len(cache) <= encoder.CACHE_LIMIT for cache in caches)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_malformed(data):
    with contextlib.suppress(mqtt5.MalformedPacket):
        mqtt5.Reader().feed(data)
