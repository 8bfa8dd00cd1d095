"""One child's MQTT 3.1.1 session as the server sees it: bytes in, events out, bytes to send back.

Sans-I/O in the style of h11: `receive_data()` takes what the socket gave, `next_event()` hands
out what happened, and every method that answers returns the bytes to write. Nothing here reads a
socket, waits or looks at a clock (time values are passed in), so every session rule is tested
with plain bytes: CONNECT comes first and once, QoS 2 is refused, PUBACKs leave in the order
their PUBLISHes came in (MQTT-4.6.0-2) although messages become safe out of order, and so do the
replies that wait for a commit (a twin's 204), deliveries get packet ids that skip those in
flight, and the keepalive sets how long silence may last.

A peer that breaks a rule does not raise: `next_event()` returns `Closed(reason)`, the reason
being one sentence for the journal, possibly after a `Reply` with the CONNACK that explains it.
Calling a method in the wrong state is our own bug and raises `LocalProtocolError`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from gateway.mqtt import codec, topics
from gateway.mqtt.codec import (
    CONNACK_ACCEPTED,
    CONNACK_ID_REJECTED,
    ConnAck,
    Connect,
    Disconnect,
    LocalProtocolError,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)

PACKET_OVERHEAD = 4096  # topic, property bag and header on top of the payload limit
PRE_AUTH_MAX_BYTES = 8192  # a CONNECT with a SAS token or a will fits; nothing bigger before auth
# The longest silence accepted, whatever the CONNECT says (keepalive 0 or up to 18 h): AWS IoT
# Core caps keepalive at 1,200 s too. A dead peer behind a NAT is found within 1.5 x this.
MAX_KEEPALIVE_SECS = 1200
_MAX_PACKET_ID = 65535
_PINGRESP = codec.encode(PingResp())
_PUBACK_HEADER = codec.encode(PubAck(1))[:2]


def _puback(packet_id: int) -> bytes:
    """codec.encode(PubAck(packet_id)) without the packet object and the encoder's checks: the
    id is one the child sent us and the decoder checked (1..65535). One per message."""
    return _PUBACK_HEADER + packet_id.to_bytes(2, "big")


class State(enum.Enum):
    AWAIT_CONNECT = "await-connect"  # nothing but a CONNECT may come
    AUTHENTICATING = "authenticating"  # CONNECT handed out; accept() or refuse() comes next
    CONNECTED = "connected"
    CLOSED = "closed"


class _Sentinel(enum.Enum):
    NEED_DATA = "need-data"  # feed more bytes with receive_data()
    PAUSED = "paused"  # answer the CONNECT with accept() or refuse() first


NEED_DATA = _Sentinel.NEED_DATA
PAUSED = _Sentinel.PAUSED


# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectReceived:
    """The child asks to connect: authenticate, then call accept() or refuse()."""

    connect: Connect


# Not frozen, as Reply: a frozen __init__ costs object.__setattr__ on the hot path.
@dataclass(slots=True)
class PublishReceived:
    """A QoS 0 or 1 message within the size limit; for QoS 1, reserve its PUBACK with
    hold_puback() before handling the next event, so that acks keep the arrival order."""

    publish: Publish


@dataclass(frozen=True, slots=True)
class SubscribeReceived:
    """Decide a granted QoS per filter, then send what grant() returns."""

    subscribe: Subscribe


@dataclass(frozen=True, slots=True)
class DeliveryAcked:
    """The child acknowledged a QoS 1 delivery; `token` is what deliver() was given."""

    packet_id: int
    token: object


@dataclass(slots=True)
class Reply:
    """Bytes the session answers on its own (PINGRESP, UNSUBACK, a refusing CONNACK)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over. An empty `reason` is a clean end (DISCONNECT, end of stream, or
    close() on our side); otherwise the peer broke a rule and `reason` says which."""

    reason: str = ""


Event = ConnectReceived | PublishReceived | SubscribeReceived | DeliveryAcked | Reply | Closed


class HeldPubAck:
    """A request's place in the answer order, released once it is safe: a QoS 1 PUBLISH's
    PUBACK, and the replies that answer it (a twin response), which go out first."""

    __slots__ = ("packet_id", "ready", "replies")

    def __init__(self, packet_id: int | None) -> None:
        self.packet_id = packet_id  # None: a QoS 0 request that only has replies
        self.ready = False
        self.replies: tuple[tuple[str, bytes], ...] = ()


# -- the session ----------------------------------------------------------------------------------


class ChildSession:
    """The server side of one child connection, from the first byte to the close."""

    def __init__(self, *, now: float, connect_timeout: float, max_message_bytes: int) -> None:
        self.state = State.AWAIT_CONNECT
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self._connect_deadline = now + connect_timeout
        # Before authentication only a small packet is buffered: a stranger's declared length
        # must not make us allocate or wait for megabytes.
        self._decoder = codec.Decoder(PRE_AUTH_MAX_BYTES)
        self._chunks: list[bytes] = []
        self._eof = False
        self._packets: deque[codec.Packet] = deque()
        self._events: deque[Event] = deque()
        self._connect: Connect | None = None
        self.keepalive = 0.0
        self.received = 0  # PUBLISHes handed out
        self.subscriptions: set[str] = set()
        self._acks: deque[HeldPubAck] = deque()
        self._outgoing: dict[int, object] = {}  # packet id -> token given to deliver()
        self._next_id = 0

    # -- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer; b"" means the stream ended. Bytes that arrive after the
        session closed are dropped: the socket may still hold some when we decide to close."""
        if self.state is State.CLOSED:
            return
        if self._eof:
            raise LocalProtocolError("receive_data() after the end of the stream")
        if data:
            self._chunks.append(data)
        else:
            self._eof = True

    def next_event(self) -> Event | _Sentinel:
        """The next thing that happened, NEED_DATA when the bytes so far are used up, or PAUSED
        while a CONNECT waits for accept() or refuse(). Once closed, always Closed()."""
        while True:
            if self._events:
                return self._events.popleft()
            if self.state is State.CLOSED:
                return Closed()
            if self.state is State.AUTHENTICATING:
                return PAUSED
            if self._packets and self.state is State.CONNECTED:  # the hot path first
                packet = self._packets.popleft()
                handle = _CONNECTED.get(type(packet), ChildSession._unexpected)
                event = handle(self, packet)
                if event is not None:
                    return event
                continue
            if not self._packets and self._chunks:
                self._parse()
                continue
            if not self._packets:
                if self._eof:
                    self.state = State.CLOSED
                    return Closed()
                return NEED_DATA
            event = self._first(self._packets.popleft())  # AWAIT_CONNECT
            if event is not None:
                return event

    def _parse(self) -> None:
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        # Only CONNECT is decoded under the pre-auth limit; what follows it waits for accept().
        first_only = 1 if self.state is State.AWAIT_CONNECT else None
        try:
            self._packets.extend(self._decoder.feed(data, max_packets=first_only))
        except codec.UnsupportedProtocol as exc:
            if self.state is State.AWAIT_CONNECT:  # MQTT-3.1.2-2: CONNACK 1, then close
                self._events.append(Reply(codec.encode(ConnAck(False, exc.return_code))))
            self._fail(f"protocol error: {exc.reason}")
        except codec.ProtocolError as exc:
            self._fail(f"protocol error: {exc.reason}")

    def _fail(self, reason: str) -> None:
        """The peer broke a rule: what is not yet handed out is dropped, but for a Reply."""
        replies = self._events
        self.close()
        self._events = replies
        self._events.append(Closed(reason))

    def _unexpected(self, packet: codec.Packet) -> None:
        if isinstance(packet, Connect):
            self._fail("second CONNECT on one connection")
        else:
            self._fail(f"unexpected {type(packet).__name__} from a client")

    def _first(self, packet: codec.Packet) -> Event | None:
        if not isinstance(packet, Connect):
            self._fail(f"first packet was {type(packet).__name__}, not CONNECT")
            return None
        if not packet.client_id:
            self._events.append(Reply(codec.encode(ConnAck(False, CONNACK_ID_REJECTED))))
            self._fail("empty client id: an IoT Hub device connects with its device id")
            return None
        self._connect = packet
        self.state = State.AUTHENTICATING
        return ConnectReceived(packet)

    def _on_publish(self, publish: Publish) -> Event | None:
        if publish.qos == 2:
            self._fail("QoS 2 is not supported by the IoT Hub device API; use QoS 0 or 1")
            return None
        if len(publish.payload) > self.max_message_bytes:
            self._fail(
                f"message of {len(publish.payload)} bytes is over the limit of "
                f"{self.max_message_bytes} (listen.max_message_bytes)"
            )
            return None
        self.received += 1
        return PublishReceived(publish)

    def _on_unsubscribe(self, unsubscribe: Unsubscribe) -> Event:
        self.subscriptions.difference_update(unsubscribe.topics)
        return Reply(codec.encode(UnsubAck(unsubscribe.packet_id)))

    def _on_puback(self, puback: PubAck) -> Event | None:
        """A delivery is done. An ack for an id we never sent is ignored, as brokers do."""
        if puback.packet_id not in self._outgoing:
            return None
        return DeliveryAcked(puback.packet_id, self._outgoing.pop(puback.packet_id))

    def _on_disconnect(self, _: Disconnect) -> Event:
        self.close()
        return Closed()

    # -- CONNECT -----------------------------------------------------------------------------

    def accept(self) -> bytes:
        """CONNACK 0: the child is in. Raises the size limit to the configured message size."""
        connect = self._expect_connect("accept()")
        self.state = State.CONNECTED
        self.keepalive = min(connect.keepalive or MAX_KEEPALIVE_SECS, MAX_KEEPALIVE_SECS)
        self._decoder.max_packet_bytes = self.max_message_bytes + PACKET_OVERHEAD
        self._chunks.append(b"")  # what came right behind CONNECT is decoded under the new limit
        return codec.encode(ConnAck(False, CONNACK_ACCEPTED))

    def refuse(self, return_code: int) -> bytes:
        """The CONNACK that refuses the CONNECT; the session is closed."""
        self._expect_connect("refuse()")
        if return_code == CONNACK_ACCEPTED:
            raise LocalProtocolError("refuse() with return code 0, which accepts")
        self.state = State.CLOSED
        return codec.encode(ConnAck(False, return_code))

    def _expect_connect(self, what: str) -> Connect:
        if self.state is not State.AUTHENTICATING or self._connect is None:
            raise LocalProtocolError(f"{what} in state {self.state.value}, not after a CONNECT")
        return self._connect

    # -- time --------------------------------------------------------------------------------

    def read_timeout(self, now: float) -> float:
        """How long the next read may wait for bytes: what is left of the CONNECT deadline,
        then 1.5 x the keepalive (MQTT-3.1.2-24). Counted per read, so time we spend not
        reading (waiting for the child to take our output) is not held against the child."""
        if self.state is State.AWAIT_CONNECT:
            return max(0.0, self._connect_deadline - now)
        if self.state is State.CONNECTED:
            return self.keepalive * 1.5
        raise LocalProtocolError(f"read_timeout() in state {self.state.value}")

    def expire(self) -> Closed:
        """read_timeout() passed without a byte: the session closes, with the reason."""
        if self.state is State.AWAIT_CONNECT:
            reason = (
                f"no CONNECT within {self.connect_timeout:g} s (listen.connect_timeout_secs)"
            )
        elif self.state is State.CONNECTED:
            reason = f"keepalive expired: nothing received for {self.keepalive * 1.5:.0f} s"
        else:
            raise LocalProtocolError(f"expire() in state {self.state.value}")
        self.state = State.CLOSED
        return Closed(reason)

    # -- answers -----------------------------------------------------------------------------

    def grant(self, subscribe: Subscribe, granted: tuple[int, ...]) -> bytes:
        """The SUBACK for `subscribe`, one granted QoS (or SUBACK_FAILURE) per filter."""
        self._expect_connected("grant()")
        if len(granted) != len(subscribe.topics):
            raise LocalProtocolError(
                f"grant() with {len(granted)} codes for {len(subscribe.topics)} filters"
            )
        self.subscriptions.update(topic for topic, _ in subscribe.topics)
        return codec.encode(SubAck(subscribe.packet_id, granted))

    def subscribed(self, topic: str) -> bool:
        """Whether any of the child's filters matches `topic` (it asked to receive it)."""
        return any(topics.matches(f, topic) for f in self.subscriptions)

    def hold_puback(self, packet_id: int | None) -> HeldPubAck:
        """Reserve this PUBLISH's place in the answer order (its PUBACK if `packet_id`, its
        replies in any case); release() it when it is safe."""
        held = HeldPubAck(packet_id)
        if self.state is not State.CLOSED:  # once closed no PUBACK leaves: nothing to order
            self._expect_connected("hold_puback()")
            self._acks.append(held)
        return held

    def release(self, held: HeldPubAck, replies: tuple[tuple[str, bytes], ...] = ()) -> bytes:
        """The answers that may leave now: this one's (its replies as (topic, payload) QoS 0
        PUBLISHes, then its PUBACK) and those queued behind it, but none while an older
        request is still waiting. Nothing once closed (commits outlive it)."""
        held.ready = True
        held.replies = replies
        out = []
        while self._acks and self._acks[0].ready:
            done = self._acks.popleft()
            for topic, payload in done.replies:
                out.append(codec.encode(Publish(topic, payload)))
            if done.packet_id is not None:
                out.append(_puback(done.packet_id))
        return b"" if self.state is State.CLOSED else b"".join(out)

    @property
    def held_pubacks(self) -> int:
        """Requests whose answer waits (for their own safety or an older one's)."""
        return len(self._acks)

    def deliver(
        self, topic: str, payload: bytes, qos: int = 0, dup: bool = False, token: object = None
    ) -> bytes:
        """A PUBLISH to the child; with QoS 1 it stays in flight until DeliveryAcked(token).

        Raises codec.ProtocolError when 65,535 deliveries are unacknowledged: the child is not
        reading. Once closed this returns b"": a late answer for a gone child is dropped."""
        if self.state is State.CLOSED:
            return b""
        self._expect_connected("deliver()")
        if qos == 0:
            return codec.encode(Publish(topic, payload))
        if qos != 1:
            raise LocalProtocolError(f"deliver() with QoS {qos!r}: a child gets QoS 0 or 1")
        packet_id = self._new_packet_id()
        self._outgoing[packet_id] = token
        return codec.encode(Publish(topic, payload, qos=qos, dup=dup, packet_id=packet_id))

    def _new_packet_id(self) -> int:
        for _ in range(_MAX_PACKET_ID):
            self._next_id = self._next_id % _MAX_PACKET_ID + 1
            if self._next_id not in self._outgoing:
                return self._next_id
        raise codec.ProtocolError("65,535 deliveries unacknowledged; the child is not reading")

    @property
    def in_flight(self) -> int:
        """QoS 1 deliveries sent and not yet acknowledged."""
        return len(self._outgoing)

    @property
    def is_open(self) -> bool:
        return self.state is not State.CLOSED

    def close(self) -> None:
        """We end the session (takeover, shutdown, a rule of ours): later events are Closed()."""
        self.state = State.CLOSED
        self._packets.clear()
        self._chunks.clear()
        self._events = deque()

    def _expect_connected(self, what: str) -> None:
        if self.state is not State.CONNECTED:
            raise LocalProtocolError(f"{what} in state {self.state.value}, before CONNACK")


# What a connected child may send; anything else (a second CONNECT, a server's packet, QoS 2's
# PUBREL) closes the session.
_CONNECTED = {
    Publish: ChildSession._on_publish,
    PingReq: lambda session, ping: Reply(_PINGRESP),
    Subscribe: lambda session, subscribe: SubscribeReceived(subscribe),
    Unsubscribe: ChildSession._on_unsubscribe,
    PubAck: ChildSession._on_puback,
    Disconnect: ChildSession._on_disconnect,
}
