"""MQTT and AMQP over WebSocket on the 443 head: the upgrade, then the frames around the stream.

What the device SDKs send (azure-iot-device with `websockets=True` through paho, the Node SDK's
MqttWs through mqtt.js): `GET /$iothub/websocket` (Node adds a query string), `Upgrade:
websocket`, `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Protocol: mqtt`; for AMQP (the Node
SDK's AmqpWs through rhea, the C# and Java SDKs' AMQP-WS) the same path with the subprotocol
`AMQPWSB10`. The request is parsed by h11 (https.py, which also serves the requests that are not
upgrades); a bad upgrade is answered with a status and a reason and closed: an unknown
subprotocol or a bad upgrade gets 400, a WebSocket version other than 13 gets 426.

After the 101 the connection is a ChildConnection (mqtt) or an AmqpConnection (AMQPWSB10) like
any other: `WsReader` and `WsWriter` stand in for its asyncio StreamReader and StreamWriter.
wsproto (sans-io, h11's sibling) decodes the frames; the binary payloads are the MQTT or AMQP
stream, passed on as they arrive (a message is never buffered whole, so memory per connection is
one socket read). A message longer than max_message_bytes plus the protocol's room
(MQTT_HEADER_ROOM, AMQP_ROOM), or cut into more than MAX_FRAGMENTS frames, or a text frame,
closes the connection with the WebSocket close code that says why. The reader only reads the
socket when the connection asks for more, so its back-pressure (not reading a child that is over
its bound or its rate) holds unchanged: the flood waits in the child's TCP window.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import h11
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import generate_accept_token

from gateway.child.http_messages import HttpRefused
from gateway.child.https import READ_CHUNK, Exchange, headers_of, is_upgrade, tokens
from gateway.errors import PeerError

WS_PATH = "/$iothub/websocket"
SUBPROTOCOL = "mqtt"
AMQP_SUBPROTOCOL = "AMQPWSB10"
# fixed header, topic length and topic, packet id: what an MQTT PUBLISH adds to its payload
MQTT_HEADER_ROOM = 5 + 2 + 65535 + 2
# rhea writes what its engine has in one message: a message's frames and a few small ones; the
# AMQP head's session window (max_message_bytes and two 64 KiB frames) bounds it the same way
AMQP_ROOM = 4 * 65536
ROOM = {SUBPROTOCOL: MQTT_HEADER_ROOM, AMQP_SUBPROTOCOL: AMQP_ROOM}
MAX_FRAGMENTS = 128  # frames of one message; the SDKs send one frame per message
CONTROL_BUFFER_MAX = 1 << 20  # pongs and closes a peer leaves unread before it is cut
SERVED = f"GET {WS_PATH} with Sec-WebSocket-Protocol: {SUBPROTOCOL} or {AMQP_SUBPROTOCOL}"


# an upgrade's refusal is an HTTP refusal: a status, a reason, and the line closed
UpgradeRefused = HttpRefused


class WebSocketRefusal(PeerError):
    """The peer broke a WebSocket rule after the upgrade; the connection closes."""


# -- the upgrade --------------------------------------------------------------------------------


def check_upgrade(request: h11.Request) -> tuple[str, str]:
    """The Sec-WebSocket-Accept value and the subprotocol chosen for a good upgrade;
    UpgradeRefused otherwise."""
    headers = headers_of(request)
    path = request.target.decode("latin-1").split("?", 1)[0]
    if not is_upgrade(request):
        raise UpgradeRefused(404, f"{request.method.decode('latin-1')} {path}: not a WebSocket "
                                  f"upgrade; use {SERVED}")
    if path != WS_PATH:
        raise UpgradeRefused(404, f"WebSocket upgrade for {path}: not found; use {WS_PATH}")
    if request.method != b"GET":
        raise UpgradeRefused(400, "a WebSocket upgrade is a GET request (RFC 6455 4.1)")
    if "upgrade" not in tokens(headers.get("connection", "")):
        raise UpgradeRefused(400, "a WebSocket upgrade needs Connection: Upgrade")
    if headers.get("sec-websocket-version", "") != "13":
        raise UpgradeRefused(426, f"WebSocket version {headers.get('sec-websocket-version')!r} "
                                  "is not supported: use 13 (RFC 6455)",
                             (("Sec-WebSocket-Version", "13"),))
    key = headers.get("sec-websocket-key", "")
    if not _is_key(key):
        raise UpgradeRefused(400, "Sec-WebSocket-Key is missing or not 16 bytes in base64")
    protocol = _subprotocol(headers.get("sec-websocket-protocol", ""))
    return generate_accept_token(key.encode("ascii")).decode("ascii"), protocol


def _subprotocol(offered: str) -> str:
    """The first of the client's subprotocols that is served (RFC 6455 4.2.2: its order is its
    preference)."""
    for protocol in (p.strip() for p in offered.split(",")):
        if protocol in ROOM:
            return protocol
    raise UpgradeRefused(400, f"Sec-WebSocket-Protocol {offered[:80]!r}: this port serves only "
                              f"{SUBPROTOCOL!r} and {AMQP_SUBPROTOCOL!r}")


def _is_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, UnicodeEncodeError):
        return False


async def upgrade(exchange: Exchange, request: h11.Request) -> tuple[str, bytes]:
    """Answer a request that asks for a WebSocket: 101, or UpgradeRefused (not yet written:
    the caller answers it). Returns the subprotocol and the bytes that followed the head
    (already frames)."""
    accept, protocol = check_upgrade(request)
    if not isinstance(await exchange.next_event(), h11.EndOfMessage):
        raise UpgradeRefused(400, "a WebSocket upgrade request has no body")
    exchange.writer.write(exchange.conn.send(h11.InformationalResponse(
        status_code=101, reason=b"Switching Protocols", headers=[
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept),
        ("Sec-WebSocket-Protocol", protocol),
    ])) or b"")
    return protocol, exchange.conn.trailing_data[0]


# -- the frames ---------------------------------------------------------------------------------


class WsChannel:
    """One WebSocket connection over a stream pair: the decoder, and what the peer is owed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_message_bytes: int, trailing: bytes = b"",
                 protocol: str = SUBPROTOCOL) -> None:
        self.raw_reader = reader
        self.raw_writer = writer
        self.ws = WsConnection(ConnectionType.SERVER)
        self.protocol = protocol
        self.max_message = max_message_bytes + ROOM[protocol]
        self._message_bytes = 0  # of the message being received
        self._fragments = 0
        self._pending: list[bytes] = []  # decoded bytes not yet read
        self._eof = False
        self._trailing = trailing

    async def read(self, n: int = -1) -> bytes:
        """MQTT or AMQP bytes; b"" once the peer closed (a close frame or the socket)."""
        while not self._pending and not self._eof:
            if self._trailing:
                data, self._trailing = self._trailing, b""
            else:
                data = await self.raw_reader.read(READ_CHUNK)
            self.receive(data)
        if not self._pending:
            return b""
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        return data

    def receive(self, data: bytes) -> None:
        """Feed socket bytes (b"": the socket ended) and act on what they hold."""
        if self.ws.state is ConnectionState.CLOSED:
            self._eof = True
            return
        self.ws.receive_data(data or None)
        for ev in self.ws.events():
            if isinstance(ev, BytesMessage):
                self._on_data(ev)
            elif isinstance(ev, Ping):
                self._send(ev.response())
            elif isinstance(ev, CloseConnection):
                self._on_close(ev)
                return
            elif isinstance(ev, TextMessage):
                self._fail(CloseReason.UNSUPPORTED_DATA,
                           "a text frame: MQTT and AMQP over WebSocket are carried in binary "
                           "frames")
            # a Pong answers nothing we asked: ignored

    def _on_data(self, ev: BytesMessage) -> None:
        self._message_bytes += len(ev.data)
        self._fragments += ev.frame_finished
        if self._message_bytes > self.max_message:
            self._fail(CloseReason.MESSAGE_TOO_BIG,
                       f"WebSocket message over {self.max_message} bytes "
                       f"(listen.max_message_bytes plus the {self.protocol} framing)")
        if self._fragments > MAX_FRAGMENTS:
            self._fail(CloseReason.POLICY_VIOLATION,
                       f"WebSocket message in more than {MAX_FRAGMENTS} frames")
        if ev.message_finished:
            self._message_bytes = self._fragments = 0
        if ev.data:
            self._pending.append(bytes(ev.data))

    def _on_close(self, ev: CloseConnection) -> None:
        """The peer's close frame is answered; a frame wsproto could not parse is the peer's
        error, answered with the close code wsproto chose."""
        if self.ws.state is ConnectionState.REMOTE_CLOSING:
            self._send(ev.response())
            self._eof = True
        elif self.ws.state is ConnectionState.CLOSED:
            self._eof = True  # the socket ended without a close frame
        else:
            self._fail(ev.code, f"bad WebSocket frame: {ev.reason}")

    def _fail(self, code: int, reason: str) -> None:
        self.close_frame(code, reason[:120])
        raise WebSocketRefusal(reason)

    def _send(self, event: object) -> None:
        if self.raw_writer.is_closing():
            return
        self.raw_writer.write(self.ws.send(event))
        if self.raw_writer.transport.get_write_buffer_size() > CONTROL_BUFFER_MAX:
            raise WebSocketRefusal(f"the peer has not read {CONTROL_BUFFER_MAX >> 10} KiB of "
                                   "WebSocket control frames (pongs)")

    def close_frame(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Our close frame, once, if the connection is still open for one."""
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING) and \
                not self.raw_writer.is_closing():
            self.raw_writer.write(self.ws.send(CloseConnection(code=code, reason=reason)))

    def frame(self, data: bytes) -> bytes:
        """Stream bytes as one binary message; nothing once a close frame went out."""
        if self.ws.state is not ConnectionState.OPEN:
            return b""
        return self.ws.send(BytesMessage(data=data))


class WsReader:
    """What the connection reads: the decoded MQTT or AMQP bytes."""

    def __init__(self, channel: WsChannel) -> None:
        self._channel = channel

    async def read(self, n: int = -1) -> bytes:
        return await self._channel.read(n)


class WsWriter:
    """What the connection writes to: each write one binary message. The transport and the
    extra info (peer address, TLS object for X.509 children) are the socket's own, so the
    write-buffer bound and abort() work on the real bytes."""

    def __init__(self, channel: WsChannel) -> None:
        self._channel = channel
        self._raw = channel.raw_writer

    @property
    def transport(self) -> asyncio.Transport:
        return self._raw.transport  # type: ignore[return-value]

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._raw.get_extra_info(name, default)

    def write(self, data: bytes) -> None:
        framed = self._channel.frame(data)
        if framed:
            self._raw.write(framed)

    async def drain(self) -> None:
        await self._raw.drain()

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def close(self) -> None:
        self._channel.close_frame()
        self._raw.close()

    async def wait_closed(self) -> None:
        await self._raw.wait_closed()


def streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_message_bytes: int,
            trailing: bytes = b"", protocol: str = SUBPROTOCOL) -> tuple[WsReader, WsWriter]:
    """The stream pair a ChildConnection (mqtt) or an AmqpConnection (AMQPWSB10) runs on,
    after a good upgrade."""
    channel = WsChannel(reader, writer, max_message_bytes, trailing, protocol)
    return WsReader(channel), WsWriter(channel)
