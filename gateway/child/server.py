"""The child-facing MQTT 3.1.1 listeners: connections, CONNECT/auth, keepalive, PUBACK order.

The protocol lives in codec.py (bytes in, packets out); this module is the I/O around it and the
per-connection rules: the first packet is CONNECT within a deadline, a second connection with the
same client id takes over, PUBACKs leave in the order their PUBLISHes came in (MQTT-4.6.0-2) even
though messages become safe out of order, and a peer that breaks the rules is closed with one
journal line saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import PeerError
from gateway.log import Event, event
from gateway.mqtt import codec, topics
from gateway.mqtt.codec import (
    CONNACK_ACCEPTED,
    CONNACK_UNAVAILABLE,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)

READ_CHUNK = 65536
PACKET_OVERHEAD = 4096  # topic, property bag and header on top of the payload limit
PRE_AUTH_MAX_BYTES = 8192  # a CONNECT with a SAS token or a will fits; nothing bigger before auth
WRITE_BUFFER_MAX = 1 << 20  # a child that does not read is paused, then closed
# Connections still in TLS handshake or waiting for CONNECT, on top of listen.max_connections.
PREAUTH_SLACK = 64
# The longest silence accepted, whatever the CONNECT says (keepalive 0 or up to 18 h): AWS IoT
# Core caps keepalive at 1,200 s too. A dead peer behind a NAT is found within 1.5 x this.
MAX_KEEPALIVE_SECS = 1200
LOG_KEYS_MAX = 4096  # rate-limit memory: peers choose client ids, so the table is bounded


class Refusal(PeerError):
    """The peer broke a rule; the connection closes and `reason` goes to the journal."""


class _Refused(PeerError):
    """CONNECT was answered with a refusal (already logged): close without another line."""

    def __init__(self) -> None:
        super().__init__("CONNECT refused")


@dataclass(frozen=True)
class Verdict:
    """What the authenticator decided about a CONNECT."""

    ok: bool
    return_code: int
    reason: str


class Handler:
    """What the server asks of the rest of the gateway. Subclassed by the service's wiring."""

    def authenticate(self, connect: Connect, cert_der: bytes | None) -> Verdict:
        raise NotImplementedError

    def on_publish(self, conn: ChildConnection, publish: Publish) -> None:
        """Handle one PUBLISH; call `conn.hold_puback()` for a QoS 1 one. Raise Refusal."""
        raise NotImplementedError

    def on_subscribe(self, conn: ChildConnection, topic_filter: str, qos: int) -> int:
        """Granted QoS, or raise Refusal."""
        raise NotImplementedError

    def on_subscribed(self, conn: ChildConnection) -> None:
        """A SUBACK went out: deliveries that waited for this subscription may start."""

    def on_closed(self, conn: ChildConnection) -> None:
        """The connection is gone (any reason)."""


class ChildConnection:
    """One child: the packet loop and the ordered PUBACK queue."""

    def __init__(
        self,
        server: ChildServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        listener: str,
    ) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self.listener = listener
        self.device_id = ""
        self.peer = _peer(writer)
        self.connected_at = time.time()
        # Before authentication only a small packet is buffered: a stranger's declared length
        # must not make us allocate or wait for megabytes.
        self._decoder = codec.Decoder(PRE_AUTH_MAX_BYTES)
        self._acks: deque[list] = deque()  # [packet_id, ready]
        self._keepalive = 0
        self._closed = asyncio.Event()
        self.close_reason = ""
        self.received = 0
        self.subscriptions: set[str] = set()
        self._outgoing: dict[int, Callable[[], None] | None] = {}  # packet id -> on PUBACK
        self._next_id = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            await self._handshake()
            await self._packet_loop()
        except Refusal as exc:
            self._log_refusal(str(exc))
        except codec.UnsupportedProtocol as exc:
            if not self.device_id:
                self.send(ConnAck(False, exc.return_code))  # MQTT-3.1.2-2: CONNACK 1, close
                with contextlib.suppress(Exception):
                    await self._writer.drain()
            self._log_refusal(f"protocol error: {exc.reason}")
        except codec.ProtocolError as exc:
            self._log_refusal(f"protocol error: {exc.reason}")
        except (_Refused, ConnectionError, ssl.SSLError, TimeoutError):
            pass
        finally:
            await self._finish()

    def close(self, reason: str) -> None:
        """Close from elsewhere (takeover, registry change, shutdown)."""
        if not self.close_reason:
            self.close_reason = reason
        self._closed.set()
        self._writer.close()

    async def _finish(self) -> None:
        self._closed.set()
        self._server._forget(self)
        with contextlib.suppress(Exception):
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        # close() waits for unread output to flush; a peer that never reads would keep the socket
        # and its buffer for ever.
        self._writer.transport.abort()
        if self.device_id and self.close_reason:
            event(
                Event.CHILD_CLOSED,
                f"child {self.device_id}: disconnected: {self.close_reason}",
                device_id=self.device_id,
            )

    def _log_refusal(self, reason: str) -> None:
        who = self.device_id or f"peer {self.peer}"
        self.close_reason = reason
        self._server.log_limited(
            Event.CHILD_PROTOCOL_ERROR,
            f"child {who}: closed: {reason}",
            device_id=self.device_id,
        )

    # -- CONNECT -----------------------------------------------------------------------------

    async def _handshake(self) -> None:
        deadline = self._server.connect_timeout
        try:
            connect = await asyncio.wait_for(self._first_packet(), deadline)
        except TimeoutError:
            raise Refusal(f"no CONNECT within {deadline:g} s (listen.connect_timeout_secs)") \
                from None
        if not isinstance(connect, Connect):
            raise Refusal(f"first packet was {type(connect).__name__}, not CONNECT")
        if not connect.client_id:
            self.send(ConnAck(False, codec.CONNACK_ID_REJECTED))
            raise Refusal("empty client id: an IoT Hub device connects with its device id")
        verdict = self._server.admit(self, connect)
        if not verdict.ok:
            self.send(ConnAck(False, verdict.return_code))
            self._server.log_limited(
                Event.CHILD_REFUSED,
                f"child {connect.client_id or '(no client id)'} from {self.peer}: refused "
                f"(CONNACK {verdict.return_code}): {verdict.reason}",
                device_id=connect.client_id,
                cause=verdict.reason.split(":")[0][:32],
            )
            await self._writer.drain()
            raise _Refused
        self.device_id = connect.client_id
        self._keepalive = min(connect.keepalive or MAX_KEEPALIVE_SECS, MAX_KEEPALIVE_SECS)
        self._decoder.max_packet_bytes = self._server.max_message_bytes + PACKET_OVERHEAD
        self.send(ConnAck(False, CONNACK_ACCEPTED))
        event(
            Event.CHILD_CONNECTED,
            f"child {self.device_id}: connected from {self.peer} ({self.listener})",
            device_id=self.device_id,
        )

    async def _first_packet(self) -> object:
        while True:
            data = await self._reader.read(READ_CHUNK)
            if not data:
                raise ConnectionResetError
            packets = self._decoder.feed(data, max_packets=1)
            if packets:
                return packets[0]

    # -- packets -----------------------------------------------------------------------------

    async def _packet_loop(self) -> None:
        for packet in self._decoder.feed(b""):  # what came right behind CONNECT
            self._dispatch(packet)
        timeout = self._keepalive * 1.5
        while not self._closed.is_set():
            try:
                data = await asyncio.wait_for(self._reader.read(READ_CHUNK), timeout)
            except TimeoutError:
                raise Refusal(
                    f"keepalive expired: nothing received for {timeout:.0f} s"
                ) from None
            if not data:
                return
            for packet in self._decoder.feed(data):
                self._dispatch(packet)
            if self._writer.transport.get_write_buffer_size() > WRITE_BUFFER_MAX:
                try:  # stop reading from a child that does not read what we send it
                    await asyncio.wait_for(self._writer.drain(), self._server.connect_timeout * 3)
                except TimeoutError:
                    raise Refusal(
                        f"the child has not read {WRITE_BUFFER_MAX >> 10} KiB of answers"
                    ) from None

    def _dispatch(self, packet: object) -> None:
        if isinstance(packet, Publish):
            self._on_publish(packet)
        elif isinstance(packet, PingReq):
            self.send(PingResp())
        elif isinstance(packet, Subscribe):
            self._on_subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            self.subscriptions.difference_update(packet.topics)
            self.send(UnsubAck(packet.packet_id))
        elif isinstance(packet, PubAck):
            self._on_puback(packet.packet_id)
        elif isinstance(packet, Disconnect):
            self.close_reason = ""
            self._closed.set()
        elif isinstance(packet, Connect):
            raise Refusal("second CONNECT on one connection")
        else:
            raise Refusal(f"unexpected {type(packet).__name__} from a client")

    def _on_publish(self, publish: Publish) -> None:
        if publish.qos == 2:
            raise Refusal("QoS 2 is not supported by the IoT Hub device API; use QoS 0 or 1")
        if len(publish.payload) > self._server.max_message_bytes:
            raise Refusal(
                f"message of {len(publish.payload)} bytes is over the limit of "
                f"{self._server.max_message_bytes} (listen.max_message_bytes)"
            )
        self.received += 1
        self._server.handler.on_publish(self, publish)

    def _on_subscribe(self, subscribe: Subscribe) -> None:
        granted = tuple(
            self._server.handler.on_subscribe(self, topic, qos) for topic, qos in subscribe.topics
        )
        self.subscriptions.update(topic for topic, _ in subscribe.topics)
        self.send(SubAck(subscribe.packet_id, granted))
        self._server.handler.on_subscribed(self)

    def _on_puback(self, packet_id: int) -> None:
        """A delivery is done. An ack for an id we never sent is ignored, as brokers do."""
        on_acked = self._outgoing.pop(packet_id, None)
        if on_acked is not None:
            on_acked()

    # -- output ------------------------------------------------------------------------------

    def send(self, packet: object) -> None:
        """Queue a packet; a child whose unread output passes twice WRITE_BUFFER_MAX in one
        read's worth of answers (the loop pauses at WRITE_BUFFER_MAX) is closed at once."""
        if self._writer.is_closing():
            return
        if self._writer.transport.get_write_buffer_size() > 2 * WRITE_BUFFER_MAX:
            self._log_refusal(f"not reading: over {2 * WRITE_BUFFER_MAX} bytes of output unread")
            self.close(self.close_reason)
            self._writer.transport.abort()
            return
        self._writer.write(codec.encode(packet))

    def subscribed(self, topic: str) -> bool:
        """Whether any of the child's filters matches `topic` (it asked to receive it)."""
        return any(topics.matches(f, topic) for f in self.subscriptions)

    @property
    def in_flight(self) -> int:
        return len(self._outgoing)

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set() and not self._writer.is_closing()

    def deliver(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        on_acked: Callable[[], None] | None = None,
        dup: bool = False,
    ) -> None:
        """Send a PUBLISH to the child; with QoS 1, `on_acked` runs when its PUBACK arrives."""
        if qos == 0:
            self.send(Publish(topic, payload))
            return
        packet_id = self._new_packet_id()
        self._outgoing[packet_id] = on_acked
        self.send(Publish(topic, payload, qos=1, dup=dup, packet_id=packet_id))

    def _new_packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._outgoing:
                return self._next_id
        raise Refusal("65,535 deliveries unacknowledged; the child is not reading")

    def hold_puback(self, packet_id: int) -> Callable[[], None]:
        """Reserve this PUBLISH's place in the PUBACK order; call the result when it is safe."""
        entry = [packet_id, False]
        self._acks.append(entry)

        def release() -> None:
            entry[1] = True
            self._flush_acks()

        return release

    def _flush_acks(self) -> None:
        while self._acks and self._acks[0][1]:
            self.send(PubAck(self._acks.popleft()[0]))


class ChildServer:
    """The listeners and the table of connected children."""

    def __init__(self, listen, handler: Handler) -> None:
        self._cfg = listen
        self.handler = handler
        self.max_message_bytes = listen.max_message_bytes
        self.connect_timeout = listen.connect_timeout_secs
        self.sessions: dict[str, ChildConnection] = {}
        self._all: set[ChildConnection] = set()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._log_times: dict[str, float] = {}
        self.refused = 0
        self.last_refusal: dict | None = None

    async def start(self, tls: ssl.SSLContext | None) -> list[tuple[str, int]]:
        """Bind the listeners; returns the bound (host, port) pairs (port 0 picks a free one)."""
        bound = []
        if self._cfg.port and tls is not None:
            bound.append(await self._listen(self._cfg.port, tls, "tls"))
        if self._cfg.plain_port:
            bound.append(await self._listen(self._cfg.plain_port, None, "plain"))
        return bound

    async def _listen(self, port: int, tls: ssl.SSLContext | None, name: str) -> tuple[str, int]:
        async def on_client(reader, writer) -> None:
            if len(self._all) >= self._cfg.max_connections + PREAUTH_SLACK:
                self.log_limited(
                    Event.CHILD_REFUSED,
                    f"peer {_peer(writer)}: closed: {len(self._all)} connections open "
                    "(listen.max_connections and those still handshaking)",
                    cause="connections",
                )
                writer.transport.abort()
                return
            conn = ChildConnection(self, reader, writer, name)
            self._all.add(conn)
            await conn.serve()

        server = await asyncio.start_server(
            on_client, self._cfg.host, port, ssl=tls, limit=READ_CHUNK, backlog=128,
            ssl_handshake_timeout=self.connect_timeout if tls is not None else None,
        )
        self._servers.append(server)
        return server.sockets[0].getsockname()[:2]

    def admit(self, conn: ChildConnection, connect: Connect) -> Verdict:
        if len(self.sessions) >= self._cfg.max_connections:
            return Verdict(False, CONNACK_UNAVAILABLE, "listen.max_connections reached")
        verdict = self.handler.authenticate(connect, _peer_cert(conn._writer))
        if not verdict.ok:
            self.refused += 1
            self.last_refusal = {
                "device_id": connect.client_id,
                "reason": verdict.reason,
                "at": int(time.time()),
            }
            return verdict
        old = self.sessions.get(connect.client_id)
        if old is not None:
            old.close("session taken over by a new connection with the same client id")
        self.sessions[connect.client_id] = conn
        return verdict

    def _forget(self, conn: ChildConnection) -> None:
        self._all.discard(conn)
        if conn.device_id and self.sessions.get(conn.device_id) is conn:
            del self.sessions[conn.device_id]
            self.handler.on_closed(conn)

    def disconnect(self, device_id: str, reason: str) -> None:
        conn = self.sessions.get(device_id)
        if conn is not None:
            conn.close(reason)

    def log_limited(
        self, kind: Event, message: str, device_id: str = "", cause: str = ""
    ) -> None:
        """One line per device, kind and cause a minute: a looping child must not wear the card."""
        key = f"{kind.name}:{device_id}:{cause}"
        now = time.monotonic()
        if len(self._log_times) >= LOG_KEYS_MAX:
            self._log_times = {k: t for k, t in self._log_times.items() if now - t < 60}
            if len(self._log_times) >= LOG_KEYS_MAX:  # a flood of client ids: one line for all
                key = f"{kind.name}:*:{cause}"
        if now - self._log_times.get(key, -1e9) >= 60:
            self._log_times[key] = now
            event(kind, message, level=logging.WARNING, device_id=device_id)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._all):
            conn.close("gateway shutting down")
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 3.0)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "?"


def _peer_cert(writer: asyncio.StreamWriter) -> bytes | None:
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)
