"""One MQTT 5 client connection to the cloud broker, on the gateway's event loop.

An asyncio protocol: bytes in are split into packets by mqtt5.Reader and handed to the owner's
callbacks; packets out are queued and written once per loop turn, so that a fill of 100
telemetry messages is one socket write (and one TLS record run) instead of 100. QoS 1 PUBLISHes
from the broker are acknowledged only after the owner's handler returned: if it raises, the
connection is dropped without the PUBACK and the broker sends the message again. A handler
whose work must be durable first (a cloud-to-device message, a document) takes the PUBACK with
`hold()` and releases it after the writer's commit; PUBACKs still leave in the order the
PUBLISHes came (MQTT-4.6.0-2), and the broker's in-flight sends to us, and so the PUBACKs held
here, are bounded by the Receive Maximum the uplink asks for in its CONNECT.

Keepalive follows MQTT 5.0 3.1.2.10: a PINGREQ when the link has been quiet for the keepalive,
and a connection whose broker does not answer within half a keepalive more is declared dead.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway import sockets
from gateway.mqtt import mqtt5


@dataclass
class SessionCallbacks:
    on_connack: Callable[[mqtt5.ConnAck], None]
    on_puback: Callable[[int, int], None]  # packet id, reason code
    on_pubacks: Callable[[list[int]], None]  # packet ids of plain PUBACKs (reason 0), in order
    # the packet, and hold(): take its PUBACK, returning the function that releases it
    on_message: Callable[[mqtt5.Publish, Callable[[], Callable[[], None]]], None]
    on_lost: Callable[[str], None]  # why, in one line
    on_read_done: Callable[[], None]  # after each read's packets: the moment to send more


class CloudSession(asyncio.Protocol):
    """The transport side of the uplink; the Uplink decides what to send."""

    def __init__(self, callbacks: SessionCallbacks, keepalive: int) -> None:
        self._cb = callbacks
        self._keepalive = keepalive
        self._reader = mqtt5.Reader()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._next_id = 0
        self.in_use: set[int] = set()  # packet ids awaiting their PUBACK/SUBACK/UNSUBACK
        self._acks: deque[list] = deque()  # [packet id, released]: our PUBACKs, in order
        self._last_in = self._last_out = time.monotonic()
        self._ping_sent_at = 0.0
        self._closing = False
        self._lost_reported = False
        self._ticker: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._transport = transport
        self._schedule_tick()

    def data_received(self, data: bytes) -> None:
        self._last_in = time.monotonic()
        self._ping_sent_at = 0.0
        try:
            packets = self._reader.feed(data, acks_as_ids=True)
        except mqtt5.MalformedPacket as exc:
            self._fail(f"the broker sent a malformed packet: {exc}")
            return
        acked: list[int] = []  # plain PUBACKs (the hot path), handed on as one list
        for packet in packets:
            if self._closing:
                return
            if packet.__class__ is int:
                acked.append(packet)
                continue
            if acked:
                self._acked(acked)
                acked = []
            self._dispatch(packet)
        if acked and not self._closing:
            self._acked(acked)
        self._cb.on_read_done()

    def _acked(self, packet_ids: list[int]) -> None:
        self.in_use.difference_update(packet_ids)
        self._cb.on_pubacks(packet_ids)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._ticker is not None:
            self._ticker.cancel()
        if exc is not None:
            self._report_lost(f"connection lost: {exc}")
        else:
            self._report_lost("the broker closed the connection")

    # -- sending ---------------------------------------------------------------------------

    def send(self, packet: bytes) -> None:
        if self._transport is None or self._closing:
            return
        self._out.append(packet)
        self._flush_soon()

    def send_all(self, packets: list[bytes]) -> None:
        """`send` for each, in order (a drain's fill)."""
        if self._transport is None or self._closing or not packets:
            return
        self._out.extend(packets)
        self._flush_soon()

    def _flush_soon(self) -> None:
        """What was queued goes out in one write at the end of this loop turn."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self._transport.write(data)
            self._last_out = time.monotonic()

    def packet_id(self) -> int:
        """The next free packet id (1..65535), marked in use until its acknowledgement."""
        candidate = self._next_id % 65535 + 1
        if candidate not in self.in_use:  # nearly always: ids are taken and freed in turn
            self._next_id = candidate
            self.in_use.add(candidate)
            return candidate
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self.in_use:
                self.in_use.add(self._next_id)
                return self._next_id
        raise RuntimeError("all 65535 packet ids are in flight")

    def close(self) -> None:
        """Say DISCONNECT (so the broker drops the will) and close; no on_lost for this."""
        self._lost_reported = True
        if self._transport is None:
            return
        self._out.append(mqtt5.DISCONNECT_BYTES)
        self.flush()
        self._closing = True
        self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once, with nothing more sent."""
        self._closing = True
        sockets.abort(self._transport)

    # -- receiving -------------------------------------------------------------------------

    def _dispatch(self, packet: mqtt5.Packet) -> None:
        if isinstance(packet, mqtt5.Ack):
            self.in_use.discard(packet.packet_id)
            if packet.kind == mqtt5.PUBACK:
                self._cb.on_puback(packet.packet_id, packet.reasons[0] if packet.reasons else 0)
        elif isinstance(packet, mqtt5.Publish):
            self._received(packet)
        elif isinstance(packet, mqtt5.ConnAck):
            self._cb.on_connack(packet)
        elif isinstance(packet, mqtt5.Disconnect):
            why = mqtt5.reason_name(packet.reason)
            if packet.reason_string:
                why += f" ({packet.reason_string})"
            self._fail(f"disconnected by the broker: {why}")

    def _received(self, packet: mqtt5.Publish) -> None:
        if packet.qos == 2:
            self._fail("the broker sent a QoS 2 message on a QoS 1 subscription")
            return
        entry = [packet.packet_id, False]
        held = False

        def release() -> None:
            entry[1] = True
            self._flush_acks()

        def hold() -> Callable[[], None]:
            nonlocal held
            held = True
            return release

        if packet.qos == 1:
            self._acks.append(entry)
        try:
            self._cb.on_message(packet, hold)
        except Exception as exc:  # not stored: no PUBACK, the broker sends it again
            self._fail(f"could not handle a message from the cloud: {exc}")
            return
        if packet.qos == 1 and not held:
            release()

    def _flush_acks(self) -> None:
        while self._acks and self._acks[0][1]:
            self.send(mqtt5.puback(self._acks.popleft()[0]))

    # -- keepalive -------------------------------------------------------------------------

    def _schedule_tick(self) -> None:
        if self._keepalive > 0:
            loop = asyncio.get_running_loop()
            self._ticker = loop.call_later(min(1.0, self._keepalive / 2), self._tick)

    def _tick(self) -> None:
        if self._transport is None or self._closing:
            return
        now = time.monotonic()
        if self._ping_sent_at and now - self._ping_sent_at > self._keepalive / 2:
            self._fail(
                f"the broker stopped answering (no PINGRESP within "
                f"{self._keepalive * 1.5:.0f} s): a half-open connection"
            )
            return
        quiet_in, quiet_out = now - self._last_in, now - self._last_out
        if not self._ping_sent_at and max(quiet_in, quiet_out) >= self._keepalive:
            self._ping_sent_at = now
            self.send(mqtt5.PINGREQ_BYTES)
        self._schedule_tick()

    # -- failure ---------------------------------------------------------------------------

    def _fail(self, why: str) -> None:
        self._report_lost(why)
        self.abort()

    def _report_lost(self, why: str) -> None:
        if not self._lost_reported:
            self._lost_reported = True
            self._cb.on_lost(why)
