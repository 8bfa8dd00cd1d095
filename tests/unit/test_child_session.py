"""The child session's rules, by bytes alone: no socket, no loop, no clock."""

from __future__ import annotations

import pytest

from gateway.mqtt import codec
from gateway.mqtt.codec import (
    ConnAck,
    Connect,
    Disconnect,
    LocalProtocolError,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    encode,
)
from gateway.mqtt.session import (
    MAX_KEEPALIVE_SECS,
    NEED_DATA,
    PAUSED,
    PRE_AUTH_MAX_BYTES,
    ChildSession,
    Closed,
    ConnectReceived,
    DeliveryAcked,
    PublishReceived,
    Reply,
    SubscribeReceived,
)

MAX_MESSAGE = 1000


def new_session(now: float = 0.0) -> ChildSession:
    return ChildSession(now=now, connect_timeout=5.0, max_message_bytes=MAX_MESSAGE)


def events(session: ChildSession) -> list:
    """Every event up to the point where the session needs bytes or an answer."""
    out = []
    while (event := session.next_event()) not in (NEED_DATA, PAUSED):
        out.append(event)
        if isinstance(event, Closed):
            break
    return out


def decoded(data: bytes) -> list:
    return codec.Decoder().feed(data)


def connected(keepalive: int = 60) -> ChildSession:
    session = new_session()
    session.receive_data(encode(Connect("dev-1", keepalive=keepalive)))
    assert events(session) == [ConnectReceived(Connect("dev-1", keepalive=keepalive))]
    assert decoded(session.accept()) == [ConnAck(False, 0)]
    return session


def feed(session: ChildSession, *packets) -> list:
    session.receive_data(b"".join(encode(p) for p in packets))
    return events(session)


def publish(packet_id: int, payload: bytes = b"x") -> Publish:
    return Publish("devices/dev-1/messages/events/", payload, qos=1, packet_id=packet_id)


# -- CONNECT ------------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [PingReq(), Publish("a/b", b"x"), Subscribe(1, (("a", 0),))])
def test_connect_must_come_first(first):
    session = new_session()
    assert feed(session, first) == [
        Closed(f"first packet was {type(first).__name__}, not CONNECT")
    ]
    assert not session.is_open


def test_connect_in_single_bytes_then_paused_until_answered():
    session = new_session()
    data = encode(Connect("dev-1")) + encode(PingReq())
    for byte in data[:-3]:
        session.receive_data(bytes([byte]))
        assert session.next_event() is NEED_DATA
    session.receive_data(data[-3:])
    assert events(session) == [ConnectReceived(Connect("dev-1"))]
    assert session.next_event() is PAUSED  # the PINGREQ behind it waits for the verdict
    session.accept()
    assert events(session) == [Reply(encode(PingResp()))]


def test_packets_behind_connect_are_decoded_under_the_raised_limit():
    """One chunk: a CONNECT then a PUBLISH bigger than the pre-auth limit allows."""
    session = ChildSession(now=0.0, connect_timeout=5.0, max_message_bytes=2 * PRE_AUTH_MAX_BYTES)
    big = Publish("t/x", b"p" * (PRE_AUTH_MAX_BYTES + 1))
    session.receive_data(encode(Connect("dev-1")) + encode(big))
    assert events(session) == [ConnectReceived(Connect("dev-1"))]
    session.accept()
    assert events(session) == [PublishReceived(big)]


def test_big_connect_is_refused_before_auth():
    session = new_session()
    session.receive_data(encode(Connect("dev-1", "u", b"s" * PRE_AUTH_MAX_BYTES)))
    (closed,) = events(session)
    assert closed.reason.startswith("protocol error: packet of")
    assert f"limit of {PRE_AUTH_MAX_BYTES} bytes" in closed.reason


def test_a_second_connect_closes():
    session = connected()
    assert feed(session, PingReq(), Connect("dev-1")) == [
        Reply(encode(PingResp())),
        Closed("second CONNECT on one connection"),
    ]
    assert session.next_event() == Closed()


def test_empty_client_id_gets_connack_2_then_closes():
    session = new_session()
    reply, closed = feed(session, Connect(""))
    assert decoded(reply.data) == [ConnAck(False, codec.CONNACK_ID_REJECTED)]
    assert "empty client id" in closed.reason


def test_unsupported_protocol_gets_connack_1():
    session = new_session()
    data = bytearray(encode(Connect("dev-1")))
    data[8] = 5  # protocol level byte: MQTT 5
    session.receive_data(bytes(data))
    reply, closed = events(session)
    assert decoded(reply.data) == [ConnAck(False, codec.CONNACK_BAD_PROTOCOL)]
    assert closed.reason.startswith("protocol error: CONNECT protocol level 5")


def test_refused_connect_closes_and_hands_out_nothing_more():
    session = new_session()
    session.receive_data(encode(Connect("dev-1")) + encode(publish(1)))
    assert events(session) == [ConnectReceived(Connect("dev-1"))]
    assert decoded(session.refuse(codec.CONNACK_NOT_AUTHORIZED)) == [ConnAck(False, 5)]
    assert session.next_event() == Closed()
    assert not session.is_open


# -- PUBLISH ------------------------------------------------------------------------------------


def test_qos_2_publish_closes():
    session = connected()
    (closed,) = feed(session, Publish("t/x", b"x", qos=2, packet_id=1))
    assert closed.reason.startswith("QoS 2 is not supported")
    assert session.received == 0


def test_qos_2_flow_packets_close():
    session = connected()
    assert feed(session, PubRel(1)) == [Closed("unexpected PubRel from a client")]


def test_message_over_the_limit_closes_with_the_setting_named():
    session = connected()
    (closed,) = feed(session, Publish("t/x", b"x" * (MAX_MESSAGE + 1)))
    assert closed.reason == (
        f"message of {MAX_MESSAGE + 1} bytes is over the limit of {MAX_MESSAGE} "
        "(listen.max_message_bytes)"
    )


def test_pubacks_leave_in_publish_order_when_released_out_of_order():
    session = connected()
    received = feed(session, publish(7), publish(3), publish(9))
    assert [e.publish.packet_id for e in received] == [7, 3, 9]
    held = [session.hold_puback(e.publish.packet_id) for e in received]
    assert session.held_pubacks == 3
    assert session.release(held[2]) == b""
    assert session.release(held[1]) == b""
    assert session.held_pubacks == 3
    assert decoded(session.release(held[0])) == [PubAck(7), PubAck(3), PubAck(9)]
    assert session.held_pubacks == 0


def test_puback_release_is_idempotent_and_silent_once_closed():
    session = connected()
    first, second = (session.hold_puback(i) for i in (1, 2))
    assert decoded(session.release(first)) == [PubAck(1)]
    assert session.release(first) == b""
    session.close()
    assert session.release(second) == b""


# -- deliveries ---------------------------------------------------------------------------------


def test_delivery_packet_ids_count_up_and_acks_carry_the_token():
    session = connected()
    ids = [decoded(session.deliver("c/d", b"m", qos=1, token=n))[0].packet_id for n in "abc"]
    assert ids == [1, 2, 3]
    assert session.in_flight == 3
    assert feed(session, PubAck(2)) == [DeliveryAcked(2, "b")]
    assert feed(session, PubAck(2), PubAck(999)) == []  # again, or never sent: ignored
    assert session.in_flight == 2


def test_delivery_packet_ids_skip_those_in_flight_and_wrap():
    session = connected()
    for _ in range(65535):
        session.deliver("c/d", b"", qos=1)
    assert session.in_flight == 65535
    with pytest.raises(codec.ProtocolError, match="65,535 deliveries unacknowledged"):
        session.deliver("c/d", b"", qos=1)
    feed(session, PubAck(9), PubAck(4))
    (again,) = decoded(session.deliver("c/d", b"", qos=1))
    assert again.packet_id == 4  # wrapped past 65535, skipped 1..3
    (after,) = decoded(session.deliver("c/d", b"", qos=1))
    assert after.packet_id == 9


def test_qos_0_delivery_has_no_id_and_is_not_in_flight():
    session = connected()
    assert decoded(session.deliver("c/d", b"m")) == [Publish("c/d", b"m")]
    assert session.in_flight == 0


def test_delivery_after_close_is_dropped():
    session = connected()
    session.close()
    assert session.deliver("c/d", b"m", qos=1) == b""
    assert session.in_flight == 0


# -- other packets ------------------------------------------------------------------------------


def test_subscribe_grant_and_unsubscribe():
    session = connected()
    request = Subscribe(5, (("devices/dev-1/messages/devicebound/#", 1), ("$iothub/twin/res/#", 0)))
    assert feed(session, request) == [SubscribeReceived(request)]
    assert decoded(session.grant(request, (1, 0))) == [SubAck(5, (1, 0))]
    assert session.subscribed("devices/dev-1/messages/devicebound/a=b")
    assert feed(session, Unsubscribe(6, ("$iothub/twin/res/#",))) == [Reply(encode(UnsubAck(6)))]
    assert not session.subscribed("$iothub/twin/res/200/?$rid=1")
    assert session.subscribed("devices/dev-1/messages/devicebound/x")


def test_disconnect_ends_cleanly_and_drops_what_follows():
    session = connected()
    assert feed(session, Disconnect(), publish(1)) == [Closed()]
    assert session.received == 0


def test_end_of_stream_ends_cleanly():
    session = connected()
    session.receive_data(encode(publish(1)))
    session.receive_data(b"")
    assert [type(e) for e in events(session)] == [PublishReceived, Closed]
    assert session.next_event() == Closed()


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"\xf0\x00", "packet type 15 is reserved"),
        (b"\x60\x02\x00\x01", "PUBREL has fixed-header flags 0000"),
        (b"\x30\x03\x00\x05a", "PUBLISH ends inside its topic"),
        (b"\x40\x02\x00\x00", "PUBACK has packet identifier 0"),
    ],
)
def test_malformed_packets_close_with_a_reason(garbage, reason):
    session = connected()
    session.receive_data(garbage)
    (closed,) = events(session)
    assert closed.reason.startswith(f"protocol error: {reason}")
    session.receive_data(encode(PingReq()))  # late bytes after the close are dropped
    assert session.next_event() == Closed()


# -- keepalive ----------------------------------------------------------------------------------


def test_connect_deadline_counts_from_the_start():
    session = new_session(now=100.0)
    assert session.read_timeout(100.0) == 5.0
    assert session.read_timeout(103.5) == 1.5
    assert session.read_timeout(200.0) == 0.0
    assert session.expire() == Closed("no CONNECT within 5 s (listen.connect_timeout_secs)")


@pytest.mark.parametrize(
    ("keepalive", "timeout"),
    [(60, 90.0), (1, 1.5), (0, 1.5 * MAX_KEEPALIVE_SECS), (65535, 1.5 * MAX_KEEPALIVE_SECS)],
)
def test_keepalive_gives_one_and_a_half_times_capped(keepalive, timeout):
    session = connected(keepalive)
    assert session.read_timeout(1e9) == timeout
    assert session.expire() == Closed(
        f"keepalive expired: nothing received for {timeout:.0f} s"
    )
    assert not session.is_open


# -- our own misuse -----------------------------------------------------------------------------


def test_misuse_raises_local_protocol_error():
    session = new_session()
    with pytest.raises(LocalProtocolError):
        session.accept()
    with pytest.raises(LocalProtocolError):
        session.deliver("c/d", b"m")
    with pytest.raises(LocalProtocolError):
        session.hold_puback(1)
    session.receive_data(encode(Connect("dev-1")))
    events(session)
    with pytest.raises(LocalProtocolError):
        session.read_timeout(0.0)  # nothing is read while a CONNECT waits for its verdict
    with pytest.raises(LocalProtocolError):
        session.refuse(codec.CONNACK_ACCEPTED)
    session.accept()
    with pytest.raises(LocalProtocolError):
        session.grant(Subscribe(1, (("a", 0), ("b", 0))), (0,))
    with pytest.raises(LocalProtocolError):
        session.deliver("c/d", b"m", qos=2)
    session.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        session.receive_data(b"more")
