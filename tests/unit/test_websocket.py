"""The 443 head byte by byte: a real ChildServer with its WebSocket listener on a real TLS socket
(its loop in a thread), and a raw client that writes hand-made upgrade requests and frames.

What must hold: a good upgrade carries MQTT both ways in binary frames, whatever the framing
(fragments, many packets in one frame, frames pipelined behind the head); every bad request or
frame gets its status or close code and one journal line, and no byte of it reaches the session;
a flood of connections that never finish their upgrade is capped and timed out, and a good
client is served after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading

import pytest
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Pong

from gateway.child import server, websocket
from gateway.config import ListenSettings
from gateway.log import Event
from gateway.mqtt import codec
from gateway.mqtt.codec import ConnAck, Connect, PingResp, PubAck, Publish
from tests.faults.hostile import (
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    WS_ACCEPT,
    read_http_head,
    ws_frame,
    ws_upgrade,
)
from tests.support.broker import free_port
from tests.support.pki import server_tls
from tests.support.wait import wait_until

MAX_MESSAGE = 4096
MAX_CONNECTIONS = 4


class Recorder(server.Handler):
    """Accepts every CONNECT and acknowledges every PUBLISH; keeps what reached it."""

    def __init__(self) -> None:
        self.publishes: list[Publish] = []
        self.listeners: list[str] = []

    def authenticate(self, connect, cert_der):
        return server.Verdict(True, 0, "")

    def on_publish(self, conn, publish):
        self.publishes.append(publish)
        self.listeners.append(conn.listener)
        if publish.qos == 1:
            conn.hold_puback(publish.packet_id)()


class Site:
    """The server on its own loop in a thread, so the test's sockets can block."""

    def __init__(self, tmp_path) -> None:
        self.ca, cert, key = server_tls(tmp_path)
        settings = ListenSettings("127.0.0.1", 0, cert, key, None, 0, MAX_MESSAGE,
                                  MAX_CONNECTIONS, 1.0, https_port=free_port())
        self.handler = Recorder()
        self.srv = server.ChildServer(settings, self.handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(cert), str(key))
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def main() -> None:
            ((_, self.port),) = await self.srv.start(tls)
            started.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(main(), self.loop).result(10)
        assert started.is_set()

    def dial(self) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return ctx.wrap_socket(sock, server_hostname="127.0.0.1")

    def upgraded(self) -> tuple[ssl.SSLSocket, WsConnection]:
        sock = self.dial()
        sock.sendall(ws_upgrade())
        status, head, rest = read_http_head(sock)
        assert status == 101, head
        client = WsConnection(ConnectionType.CLIENT)
        client.receive_data(rest)
        return sock, client

    def close(self) -> None:
        async def stop() -> None:
            await self.srv.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.close()


def _events(sock: ssl.SSLSocket, client: WsConnection, until) -> list:
    """WebSocket events from the gateway until `until(events)` holds or the line closes."""
    events: list = list(client.events())
    while not until(events):
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            chunk = b""
        client.receive_data(chunk or None)
        events += list(client.events())
        if not chunk:
            break
    return events


def _mqtt(events: list) -> list:
    data = b"".join(bytes(e.data) for e in events if isinstance(e, BytesMessage))
    return codec.Decoder().feed(data)


def _closed_with(sock, client) -> CloseConnection:
    events = _events(sock, client, lambda evs: any(isinstance(e, CloseConnection) for e in evs))
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert closes, f"no close frame; got {events}"
    return closes[0]


CONNECT = codec.encode(Connect("ws-dev", keepalive=60))
PINGREQ = b"\xc0\x00"


def _publish(i: int) -> bytes:
    return codec.encode(Publish(f"devices/ws-dev/messages/events/n={i}", b"x" * 10, qos=1,
                                packet_id=i))


# -- a good upgrade -----------------------------------------------------------------------------


def test_the_upgrade_answer_is_the_rfc_one(site):
    sock = site.dial()
    sock.sendall(ws_upgrade(path="/$iothub/websocket?iothub-no-client-cert=true"))
    status, head, _ = read_http_head(sock)
    assert status == 101
    assert f"Sec-WebSocket-Accept: {WS_ACCEPT}".encode() in head
    assert b"Sec-WebSocket-Protocol: mqtt" in head
    sock.close()


def test_mqtt_flows_both_ways_in_binary_frames(site):
    sock, client = site.upgraded()
    sock.sendall(ws_frame(CONNECT) + ws_frame(_publish(1) + _publish(2)))  # two in one frame
    got = _mqtt(_events(sock, client, lambda evs: len(_mqtt(evs)) >= 3))
    assert got == [ConnAck(False, 0), PubAck(1), PubAck(2)]
    assert [p.packet_id for p in site.handler.publishes] == [1, 2]
    assert site.handler.listeners == ["mqtt-ws", "mqtt-ws"]
    assert site.srv.sessions["ws-dev"].listener == "mqtt-ws"
    assert site.srv.connections_by_listener() == {"mqtt-ws": 1}
    sock.close()


def test_fragments_and_split_packets_are_one_stream(site):
    """A packet cut across fragments and across messages, and frames pipelined behind the
    request head: the session sees the same bytes."""
    sock = site.dial()
    first, rest = CONNECT[:3], CONNECT[3:]
    pipelined = ws_frame(first, fin=False) + ws_frame(rest[:4], opcode=OP_CONT, fin=False)
    sock.sendall(ws_upgrade() + pipelined)
    status, _, tail = read_http_head(sock)
    assert status == 101
    client = WsConnection(ConnectionType.CLIENT)
    client.receive_data(tail)
    pub = _publish(7)
    sock.sendall(ws_frame(rest[4:], opcode=OP_CONT) + ws_frame(pub[:5]) + ws_frame(pub[5:]))
    got = _mqtt(_events(sock, client, lambda evs: len(_mqtt(evs)) >= 2))
    assert got == [ConnAck(False, 0), PubAck(7)]
    sock.close()


def test_ping_gets_its_pong_and_close_its_close(site):
    sock, client = site.upgraded()
    sock.sendall(ws_frame(CONNECT) + ws_frame(b"hello", opcode=OP_PING))
    events = _events(sock, client, lambda evs: any(isinstance(e, Pong) for e in evs))
    assert [bytes(e.payload) for e in events if isinstance(e, Pong)] == [b"hello"]
    sock.sendall(ws_frame((1000).to_bytes(2, "big"), opcode=OP_CLOSE))
    assert _closed_with(sock, client).code == 1000
    wait_until(lambda: site.srv.open_connections, lambda n: n == 0, timeout=10,
               what="the closed connection forgotten")
    assert "ws-dev" not in site.srv.sessions


# -- bad requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(("request_bytes", "status", "says"), [
    (b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n", 404, b"not found"),
    (b"POST /twins/dev/methods?api-version=2021-04-12 HTTP/1.1\r\nHost: gw\r\n"
     b"Content-Length: 2\r\n\r\n{}", 404, b"not found"),
    (b"POST /twins/dev/methods?api-version=2021-04-12 HTTP/1.1\r\nHost: gw\r\n"
     b"Content-Length: 200000\r\n\r\n{}", 413, b"over 131072"),
    (b"POST /twins/dev/methods?api-version=2021-04-12 HTTP/1.1\r\nHost: gw\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n" + (b"8000\r\n" + b"a" * 0x8000 + b"\r\n") * 5,
     413, b"over 131072"),
    (ws_upgrade(path="/mqtt"), 404, b"use /$iothub/websocket"),
    (ws_upgrade(key=None), 400, b"Sec-WebSocket-Key"),
    (ws_upgrade(key="c2hvcnQ="), 400, b"Sec-WebSocket-Key"),
    (ws_upgrade(version="8"), 426, b"use 13"),
    (ws_upgrade(protocol=None), 400, b"serves only 'mqtt' and 'AMQPWSB10'"),
    (ws_upgrade(protocol="mqttv5"), 400, b"serves only 'mqtt' and 'AMQPWSB10'"),
    (ws_upgrade(method="POST"), 400, b"is a GET"),
    (ws_upgrade(extra="X-Pad: " + "a" * 20000 + "\r\n"), 431, b"head is over"),
    (ws_upgrade(extra="X-Pad: a\r\n" * 20000), 431, b"bad HTTP request"),
    (b"\x16\x03\x01garbage\r\n\r\n", 400, b"bad HTTP request"),
], ids=["not-upgrade", "https-method", "https-declared-too-big", "https-chunked-too-big",
        "path", "no-key", "short-key", "version",
        "no-subprotocol", "unknown-subprotocol", "post", "huge-head",
        "endless-head", "garbage"])
def test_a_bad_request_gets_its_status_and_one_journal_line(site, caplog, request_bytes,
                                                            status, says):
    caplog.set_level(logging.WARNING, logger="gatewayd")
    sock = site.dial()
    with contextlib.suppress(OSError):  # the gateway may answer and close before the end
        sock.sendall(request_bytes)
    got, head, body = read_http_head(sock)
    assert got == status, head
    if status == 426:
        assert b"Sec-WebSocket-Version: 13" in head
    while chunk := sock.recv(4096):
        body += chunk
    assert says in body  # then the gateway closed
    kinds = (Event.WEBSOCKET_REFUSED, Event.HTTPS_REFUSED)
    lines = [r for r in caplog.records if getattr(r, "gw_event", None) in kinds]
    assert len(lines) == 1 and f"({status})" in lines[0].getMessage()
    https_request = b"Upgrade: websocket" not in request_bytes
    assert (lines[0].gw_event is Event.HTTPS_REFUSED) == (https_request and status != 431 and
                                                            b"garbage" not in request_bytes)
    assert site.srv.sessions == {} and site.handler.publishes == []


def test_check_upgrade_alone():
    """The decision without a socket: repeated headers join, tokens are case-insensitive."""
    import h11
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(ws_upgrade(extra="Sec-WebSocket-Protocol: mqtt\r\n", protocol="foo")
                      .replace(b"Connection: Upgrade", b"Connection: keep-alive, UPGRADE"))
    request = conn.next_event()
    assert websocket.check_upgrade(request) == (WS_ACCEPT, "mqtt")


def test_the_first_served_subprotocol_offered_is_chosen():
    """RFC 6455 4.2.2: the client lists its subprotocols by preference; AMQPWSB10 is the AMQP
    head's, mqtt the MQTT session's."""
    import h11
    for offered, chosen in (("foo, AMQPWSB10, mqtt", "AMQPWSB10"), ("mqtt,AMQPWSB10", "mqtt")):
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(ws_upgrade(protocol=offered))
        assert websocket.check_upgrade(conn.next_event())[1] == chosen


# -- bad frames ---------------------------------------------------------------------------------


def test_an_oversize_message_closes_with_1009(site, caplog):
    """A message announced far over the cap is cut where the cap is: what lies past it never
    reaches the session. (Its bytes are passed on as they arrive, so a message memory holds is
    one read, and the MQTT decoder's own packet limit still applies to what is inside.) Filled
    with PINGREQs, which the session answers one by one, it shows where the cut fell."""
    caplog.set_level(logging.WARNING, logger="gatewayd")
    cap = MAX_MESSAGE + websocket.MQTT_HEADER_ROOM
    sock, client = site.upgraded()
    sock.sendall(ws_frame(CONNECT))
    assert _mqtt(_events(sock, client, _mqtt)) == [ConnAck(False, 0)]
    pings = PINGREQ * (cap // 2 + 4096)
    with contextlib.suppress(OSError):
        sock.sendall(ws_frame(pings, length=1 << 40))
    events = _events(sock, client, lambda evs: any(isinstance(e, CloseConnection) for e in evs))
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1009]
    answered = [p for p in _mqtt(events) if isinstance(p, PingResp)]
    assert len(answered) <= cap // 2
    # the close frame goes out before the refusal is logged: await the line, not race it
    wait_until(lambda: [r.getMessage() for r in caplog.records],
               lambda lines: any(f"over {cap} bytes" in line for line in lines),
               what="the refusal's journal line")


def test_too_many_fragments_close_with_1008(site):
    sock, client = site.upgraded()
    frames = ws_frame(b"\x10", fin=False) + b"".join(
        ws_frame(b"", opcode=OP_CONT, fin=False) for _ in range(websocket.MAX_FRAGMENTS + 1))
    sock.sendall(frames)
    assert _closed_with(sock, client).code == 1008


@pytest.mark.parametrize(("frame", "code"), [
    (ws_frame(b"{}", opcode=OP_TEXT), 1003),
    (ws_frame(CONNECT, mask=False), 1002),
    (ws_frame(b"", opcode=0x3), 1002),  # reserved opcode
    (ws_frame(b"x" * 126, opcode=OP_PING), 1002),  # control frames are at most 125 bytes
    (ws_frame(CONNECT, opcode=OP_CONT), 1002),  # a continuation of nothing
], ids=["text", "unmasked", "reserved-opcode", "long-ping", "stray-continuation"])
def test_a_bad_frame_closes_with_its_code(site, frame, code):
    sock, client = site.upgraded()
    sock.sendall(frame)
    assert _closed_with(sock, client).code == code
    assert site.srv.sessions == {}


def test_a_truncated_frame_then_silence_or_eof_frees_the_connection(site):
    """Half a frame and then EOF; half a frame and then nothing (the CONNECT timeout ends it)."""
    cut, _ = site.upgraded()
    cut.sendall(ws_frame(CONNECT)[:5])
    cut.shutdown(socket.SHUT_WR)
    silent, client = site.upgraded()
    silent.sendall(ws_frame(CONNECT)[:5])
    _events(silent, client, lambda evs: False)  # returns when the gateway closes
    wait_until(lambda: site.srv.open_connections, lambda n: n == 0, timeout=10,
               what="both connections forgotten")
    assert site.handler.publishes == []


def test_a_flood_of_half_open_upgrades_is_capped_and_timed_out(site, caplog):
    """More connections than the cap that each send half a request: those past the cap are cut
    at once, the rest at listen.connect_timeout_secs; then a good client is served."""
    caplog.set_level(logging.WARNING, logger="gatewayd")
    flood = MAX_CONNECTIONS + server.PREAUTH_SLACK + 8
    socks = []
    for _ in range(flood):
        sock = site.dial()
        sock.sendall(b"GET /$iothub/websocket HTTP/1.1\r\nHost: x\r\n")  # never ends
        socks.append(sock)
    limit = MAX_CONNECTIONS + server.PREAUTH_SLACK
    assert site.srv.open_connections <= limit
    wait_until(lambda: site.srv.open_connections, lambda n: n == 0, timeout=30,
               what="the half-open upgrades timed out")
    assert any("connections open" in r.getMessage() for r in caplog.records)
    for sock in socks:
        sock.close()
    sock, client = site.upgraded()
    sock.sendall(ws_frame(CONNECT))
    assert _mqtt(_events(sock, client, _mqtt)) == [ConnAck(False, 0)]
    sock.close()
