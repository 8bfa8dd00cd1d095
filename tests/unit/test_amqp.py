"""The 5671 head byte by byte: a real ChildServer with its AMQP listener on a real TLS socket (its
loop in a thread), and Qpid Proton's own client engine (Connection, Transport) on the other end,
or hand-made bytes where a client would never send them.

What must hold: SASL comes first (ANONYMOUS then a CBS put-token, or PLAIN; for an X.509 child
its TLS client certificate and its first link), and nothing of the dialect is served before it;
a renewed token keeps the connection, a lapsed one closes it; telemetry reaches the handler as
the PUBLISH an MQTT child sends, with its property bag, and its accepted disposition leaves only
when the handler releases it; the hub's deliveries go out on the links that carry them
(cloud-to-device: accept completes, release sends it again); every refusal has its condition
and one journal line.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
import threading
import time
from urllib.parse import parse_qsl

import pytest
from cryptography.x509 import load_pem_x509_certificate
from proton import Delivery, Endpoint, Message
from wsproto import WSConnection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request
from wsproto.events import Message as WsMessage

from gateway.child import amqp, certs, server
from gateway.config import ListenSettings
from gateway.log import Event
from tests.support.amqp_client import DEVICE, HUB, TOKEN, Client
from tests.support.pki import server_tls
from tests.support.wait import wait_until

MAX_MESSAGE = 4096
MAX_CONNECTIONS = 4


class Recorder(server.Handler):
    """Accepts the tokens it is told to (any `se` of theirs), or with no token a client
    certificate of a registered thumbprint; keeps each PUBLISH with its release, for the test
    to call (the disposition must wait for it)."""

    hub_hostname = HUB

    def __init__(self) -> None:
        self.publishes: list = []
        self.releases: list = []
        self.connects: list = []
        self.certs: list = []
        self.subscribed: list = []
        self.good_password = TOKEN.encode()
        self.thumbprints: set[str] = set()

    def authenticate(self, connect, cert_der):
        self.connects.append(connect)
        self.certs.append(cert_der)
        if connect.password is None:
            ok = cert_der is not None and hashlib.sha256(cert_der).hexdigest() in self.thumbprints
            return server.Verdict(ok, 0 if ok else 5, "" if ok else
                                  "client certificate matches neither thumbprint")
        ok = _unexpiring(connect.password) == _unexpiring(self.good_password)
        return server.Verdict(ok, 0 if ok else 4, "" if ok else "bad token: wrong signature")

    def on_publish(self, conn, publish):
        self.publishes.append(publish)
        self.releases.append(conn.hold_puback(publish.packet_id))

    def on_subscribed(self, conn):
        self.subscribed.append(conn.device_id)


def _unexpiring(token: bytes) -> bytes:
    return token.partition(b"&se=")[0]


def _token(se: int) -> str:
    return _unexpiring(TOKEN.encode()).decode() + f"&se={se}"


class Site:
    """The server on its own loop in a thread, so the test's sockets can block; with `ws`, the
    443 head too (AMQP over WebSocket); with `x509`, the server asks for a client certificate
    (listen.client_ca_file) and `device_pem` is the registered device's, `stranger_pem` one of
    the same CA not registered."""

    def __init__(self, tmp_path, ws: bool = False, x509: bool = False) -> None:
        self.ca, cert, key = server_tls(tmp_path)
        settings = ListenSettings("127.0.0.1", 0, cert, key, None, 0, MAX_MESSAGE,
                                  MAX_CONNECTIONS, 2.0, amqp_port=_free_port(),
                                  https_port=_free_port() if ws else 0)
        self.handler = Recorder()
        self.srv = server.ChildServer(settings, self.handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(cert), str(key))
        if x509:
            self._client_pki(tmp_path, tls)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        bound = self.call_async(self.srv.start(tls))
        self.port = bound[-1][1]  # the AMQP head, bound last
        self.ws_port = bound[0][1] if ws else 0

    def _client_pki(self, tmp_path, tls: ssl.SSLContext) -> None:
        ca_key, ca_cert = certs.make_ca("children CA")
        certs.write_pem(tmp_path / "children-ca.pem", cert=ca_cert)
        tls.load_verify_locations(cafile=str(tmp_path / "children-ca.pem"))
        tls.verify_mode = ssl.CERT_OPTIONAL  # as the daemon with listen.client_ca_file
        for name in ("device", "stranger"):
            key, cert = certs.make_client_cert(ca_key, ca_cert, name, days=30)
            certs.write_pem(tmp_path / f"{name}.pem", key=key, cert=cert)
            setattr(self, f"{name}_pem", tmp_path / f"{name}.pem")
            if name == "device":
                self.handler.thumbprints.add(certs.thumbprint(certs.der(cert)))

    def call_async(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def call(self, fn, *args):
        """Run `fn` on the server's loop (as the hub would) and return its result."""
        async def run():
            return fn(*args)
        return self.call_async(run())

    def dial(self, port: int = 0, cert=None) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if cert is not None:
            ctx.load_cert_chain(str(cert))
        sock = socket.create_connection(("127.0.0.1", port or self.port), timeout=10)
        return ctx.wrap_socket(sock, server_hostname="127.0.0.1")

    def close(self) -> None:
        async def stop() -> None:
            await self.srv.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call_async(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.close()


@pytest.fixture
def x509_site(tmp_path):
    s = Site(tmp_path, x509=True)
    yield s
    s.close()


@pytest.fixture
def ws_site(tmp_path):
    s = Site(tmp_path, ws=True)
    yield s
    s.close()


class WsSocket:
    """A TLS socket after a WebSocket upgrade with subprotocol AMQPWSB10 (rhea's, the Node
    SDK's AmqpWs): what Client sends goes out as binary messages, what it reads is their
    payloads; b"" once the gateway closed."""

    def __init__(self, sock: ssl.SSLSocket, protocol: str = "AMQPWSB10") -> None:
        self.sock = sock
        self.ws = WsConnection(ConnectionType.CLIENT)
        self._buf = bytearray()
        self.closed_with: int | None = None
        sock.sendall(self.ws.send(Request(host="gateway", target="/$iothub/websocket",
                                          subprotocols=[protocol])))
        self.accepted = None
        while self.accepted is None:
            data = sock.recv(65536)
            assert data, "the gateway closed instead of answering the upgrade"
            self._receive(data)

    def _receive(self, data: bytes | None) -> None:
        self.ws.receive_data(data)
        for ev in self.ws.events():
            if isinstance(ev, AcceptConnection):
                self.accepted = ev
            elif isinstance(ev, BytesMessage):
                self._buf += ev.data
            elif isinstance(ev, CloseConnection):
                self.closed_with = ev.code

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(WsMessage(data=data)))

    def recv(self, n: int) -> bytes:
        while not self._buf:
            if self.closed_with is not None:
                return b""
            data = self.sock.recv(n)
            if not data:
                return b""
            self._receive(data)
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def settimeout(self, timeout) -> None:
        self.sock.settimeout(timeout)

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        self.sock.close()


def _amqp_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if getattr(r, "gw_event", None) is Event.AMQP_REFUSED]


# -- authentication ------------------------------------------------------------------------


def test_anonymous_then_put_token_admits_the_device(site):
    client = Client(site.dial())
    props = client.put_token()
    assert props["status-code"] == 200
    connect = site.handler.connects[0]
    assert connect.client_id == DEVICE
    assert connect.username.startswith(f"{HUB}/{DEVICE}/?")
    assert site.srv.sessions[DEVICE].listener == "amqp"
    assert site.srv.connections_by_listener() == {"amqp": 1}


def test_a_refused_put_token_answers_401_and_serves_nothing(site, caplog):
    client = Client(site.dial())
    props = client.put_token(token=TOKEN.replace("sig=abc", "sig=forged"))
    assert props["status-code"] == 401
    assert DEVICE not in site.srv.sessions
    link = client.sender(f"/devices/{DEVICE}/messages/events")
    client.run_until(lambda: link.state & Endpoint.REMOTE_CLOSED, "the link refused")
    assert link.remote_condition.name == "amqp:unauthorized-access"
    refused = [r.getMessage() for r in caplog.records
               if getattr(r, "gw_event", None) is Event.CHILD_REFUSED]
    assert len(refused) == 1 and "wrong signature" in refused[0]
    assert any("before a put-token" in line for line in _amqp_lines(caplog))


def test_sasl_plain_carries_the_token(site):
    client = Client(site.dial(), "PLAIN", f"{DEVICE}@sas.hub", TOKEN)
    link = client.sender(f"/devices/{DEVICE}/messages/events")
    client.run_until(lambda: link.credit > 0, "credit on the telemetry link")
    assert site.handler.connects[0].client_id == DEVICE
    assert DEVICE in site.srv.sessions


def test_a_bad_plain_token_fails_sasl(site):
    client = Client(site.dial(), "PLAIN", f"{DEVICE}@sas.hub", "SharedAccessSignature sr=x")
    client.run_until(lambda: client.eof or client.transport.condition, "the SASL failure")
    assert DEVICE not in site.srv.sessions


def test_an_x509_child_is_its_certificate_and_its_first_link(x509_site):
    """The Node SDK's X.509 way: no SASL layer, no put-token; the telemetry link names the
    device and the TLS client certificate's thumbprint admits it."""
    site = x509_site
    client = Client(site.dial(cert=site.device_pem), mech="")
    link = client.sender(f"/devices/{DEVICE}/messages/events")
    client.run_until(lambda: link.credit > 0, "credit on the telemetry link")
    connect = site.handler.connects[0]
    assert (connect.client_id, connect.password) == (DEVICE, None)
    assert connect.username.startswith(f"{HUB}/{DEVICE}/?")
    assert site.handler.certs[0] == _der(site.device_pem)
    dlv = client.send(link, Message(body=b"x509 says hi"))
    client.poll()
    wait_until(lambda: site.handler.publishes, what="the publish at the handler")
    assert site.handler.publishes[0].payload == b"x509 says hi"
    site.call(site.handler.releases[0])
    client.run_until(lambda: dlv.remote_state, "the disposition")
    assert dlv.remote_state == Delivery.ACCEPTED
    assert site.srv.sessions[DEVICE]._token_timer is None  # a certificate does not lapse


def test_sasl_external_is_offered_to_a_certificate_only(x509_site):
    site = x509_site
    with_cert = _raw_mechanisms(site.dial(cert=site.device_pem))
    assert amqp.CERT_MECHANISM in with_cert and "PLAIN" in with_cert
    assert amqp.CERT_MECHANISM not in _raw_mechanisms(site.dial())


def test_sasl_external_with_an_authzid_admits_at_once(x509_site):
    """EXTERNAL's response naming the device: decided in SASL, before any link."""
    site = x509_site
    sock = site.dial(cert=site.device_pem)
    _raw_mechanisms(sock)
    init = amqp._sasl_frame(0x41, lambda d: (d.put_symbol(amqp.symbol("EXTERNAL")),
                                            d.put_binary(DEVICE.encode())))
    sock.sendall(init)
    assert _sasl_outcome(sock) == amqp.SASL_OK
    wait_until(lambda: DEVICE in site.srv.sessions, what="the session")
    assert site.handler.connects[0].password is None


def test_a_certificate_not_registered_is_refused_with_one_line(x509_site, caplog):
    site = x509_site
    client = Client(site.dial(cert=site.stranger_pem), mech="")
    link = client.sender(f"/devices/{DEVICE}/messages/events")
    client.run_until(lambda: link.state & Endpoint.REMOTE_CLOSED, "the link refused")
    assert link.remote_condition.name == "amqp:unauthorized-access"
    assert DEVICE not in site.srv.sessions
    refused = [r.getMessage() for r in caplog.records
               if getattr(r, "gw_event", None) is Event.CHILD_REFUSED]
    assert len(refused) == 1 and "thumbprint" in refused[0]
    assert not any("link refused" in line for line in _amqp_lines(caplog))


def test_without_a_certificate_a_link_still_needs_the_put_token(x509_site):
    site = x509_site
    client = Client(site.dial(), mech="")
    link = client.sender(f"/devices/{DEVICE}/messages/events")
    client.run_until(lambda: link.state & Endpoint.REMOTE_CLOSED, "the link refused")
    assert "before a put-token" in link.remote_condition.description
    assert site.handler.connects == []


def _der(pem_path) -> bytes:
    return certs.der(load_pem_x509_certificate(pem_path.read_bytes()))


def _raw_mechanisms(sock) -> list[str]:
    """The SASL header out, the server's sasl-mechanisms frame's names back."""
    sock.sendall(amqp.SASL_HEADER)
    buf = bytearray()
    while (body := amqp._take_frame(buf, amqp.SASL_FRAME_MAX) if len(buf) > 8 else None) is None:
        data = sock.recv(65536)
        assert data, "closed before sasl-mechanisms"
        buf += data
        if buf.startswith(amqp.SASL_HEADER):
            del buf[:8]
    fields = amqp._described(body, 0x40, "sasl-mechanisms")
    return [str(n) for n in getattr(fields[0], "elements", [fields[0]])]


def _sasl_outcome(sock) -> int:
    buf = bytearray()
    while (body := amqp._take_frame(buf, amqp.SASL_FRAME_MAX)) is None:
        data = sock.recv(65536)
        assert data, "closed before sasl-outcome"
        buf += data
    return amqp._described(body, 0x44, "sasl-outcome")[0]


# -- token renewal and lapse -----------------------------------------------------------------


def test_a_renewed_token_keeps_the_connection_past_the_first_ones_expiry(site):
    first_se = int(time.time()) + 2
    client = Client(site.dial())
    assert client.put_token(_token(first_se))["status-code"] == 200
    assert client.put_token(_token(first_se + 3600))["status-code"] == 200
    assert [c.client_id for c in site.handler.connects] == [DEVICE, DEVICE]
    # the first token's lapse would have closed it by now; a round trip through the gateway's
    # loop after that instant runs whatever timer was due
    wait_until(lambda: time.time() > first_se + 1, what="the first token's expiry")
    site.call(lambda: None)
    link = client.sender(f"/devices/{DEVICE}/messages/events")
    client.run_until(lambda: link.credit > 0, "credit on the telemetry link")
    dlv = client.send(link, Message(body=b"still here"))
    client.poll()
    wait_until(lambda: site.handler.publishes, what="the publish at the handler")
    site.call(site.handler.releases[0])
    client.run_until(lambda: dlv.remote_state, "the disposition")
    assert dlv.remote_state == Delivery.ACCEPTED
    assert site.srv.sessions[DEVICE].is_open


def test_a_renewal_for_another_identity_is_refused_and_the_first_kept(site, caplog):
    client = Client(site.dial())
    assert client.put_token()["status-code"] == 200
    props = client.put_token(name=f"{HUB}/devices/someone-else")
    assert props["status-code"] == 401
    assert site.srv.sessions[DEVICE].is_open
    assert any("one identity per AMQP connection" in line for line in _amqp_lines(caplog))


def test_a_token_that_lapses_without_renewal_closes_the_connection(site, caplog):
    client = Client(site.dial())
    assert client.put_token(_token(int(time.time()) + 2))["status-code"] == 200
    client.run_until(lambda: client.conn.state & Endpoint.REMOTE_CLOSED, "the close",
                     timeout=30)
    cond = client.conn.remote_condition
    assert cond.name == "amqp:connection:forced" and "expired" in cond.description
    client.sock.close()  # the child goes, as an SDK does on a forced close
    wait_until(lambda: DEVICE not in site.srv.sessions, what="the session gone")
    closed = [r.getMessage() for r in caplog.records
              if getattr(r, "gw_event", None) is Event.CHILD_CLOSED]
    assert any("SAS token expired" in line for line in closed)


# -- telemetry -----------------------------------------------------------------------------


def test_telemetry_is_the_mqtt_publish_and_accepted_only_once_safe(site):
    client = Client(site.dial())
    client.put_token()
    link = client.sender(f"/devices/{DEVICE}/messages/events")
    client.run_until(lambda: link.credit > 0, "credit on the telemetry link")
    msg = Message(body=b'{"t": 21.5}', id="m-1", correlation_id="c-1",
                  content_type="application/json", content_encoding="utf-8",
                  properties={"alert": "high temp", "n": 3})
    dlv = client.send(link, msg)
    client.poll()  # writes what the client engine has
    wait_until(lambda: site.handler.publishes, what="the publish at the handler")
    publish = site.handler.publishes[0]
    prefix = f"devices/{DEVICE}/messages/events/"
    assert publish.topic.startswith(prefix)
    assert dict(parse_qsl(publish.topic[len(prefix):])) == {
        "alert": "high temp", "n": "3", "$.mid": "m-1", "$.cid": "c-1",
        "$.ct": "application/json", "$.ce": "utf-8"}
    assert publish.payload == b'{"t": 21.5}'
    # nothing is acknowledged before the handler says the message is safe: the gateway has
    # handled the read (the handler has the message) and written all it had to say
    site.call(lambda: None)
    client.poll()
    assert not dlv.remote_state  # no outcome
    site.call(site.handler.releases[0])
    client.run_until(lambda: dlv.remote_state, "the disposition")
    assert dlv.remote_state == Delivery.ACCEPTED


def test_a_message_over_the_cap_closes_its_link(site, caplog):
    client = Client(site.dial())
    client.put_token()
    link = client.sender(f"/devices/{DEVICE}/messages/events")
    client.run_until(lambda: link.credit > 0, "credit")
    client.send(link, Message(body=b"x" * (MAX_MESSAGE * 4)))
    client.run_until(lambda: link.state & Endpoint.REMOTE_CLOSED, "the link closed")
    assert link.remote_condition.name == "amqp:link:message-size-exceeded"
    assert not site.handler.publishes
    assert any("max_message_bytes" in line for line in _amqp_lines(caplog))


def test_a_link_for_another_device_is_refused(site, caplog):
    client = Client(site.dial())
    client.put_token()
    link = client.sender("/devices/someone-else/messages/events")
    client.run_until(lambda: link.state & Endpoint.REMOTE_CLOSED, "the link refused")
    assert link.remote_condition.name == "amqp:not-found"
    assert any("someone-else" in line for line in _amqp_lines(caplog))


# -- over WebSocket (the 443 head) ---------------------------------------------------------


def test_amqp_over_websocket_is_the_same_head_on_443(ws_site):
    """An AMQPWSB10 upgrade: 101 with the subprotocol echoed, then SASL, the put-token and
    telemetry accepted only once the handler releases it, as on 5671; listed as amqp-ws."""
    sock = WsSocket(ws_site.dial(ws_site.ws_port))
    assert sock.accepted.subprotocol == "AMQPWSB10"
    client = Client(sock)
    assert client.put_token()["status-code"] == 200
    assert ws_site.srv.sessions[DEVICE].listener == "amqp-ws"
    assert ws_site.srv.connections_by_listener()["amqp-ws"] == 1
    link = client.sender(f"/devices/{DEVICE}/messages/events")
    client.run_until(lambda: link.credit > 0, "credit on the telemetry link")
    dlv = client.send(link, Message(body=b'{"t": 1}', properties={"k": "v"}))
    client.poll()
    wait_until(lambda: ws_site.handler.publishes, what="the publish at the handler")
    assert ws_site.handler.publishes[0].topic == f"devices/{DEVICE}/messages/events/k=v"
    ws_site.call(lambda: None)
    client.poll()
    assert not dlv.remote_state
    ws_site.call(ws_site.handler.releases[0])
    client.run_until(lambda: dlv.remote_state, "the disposition")
    assert dlv.remote_state == Delivery.ACCEPTED


def test_amqp_over_websocket_refusals_close_with_a_close_frame(ws_site, caplog):
    """Bytes that are not AMQP inside the WebSocket: refused by the AMQP head with its journal
    line, and the WebSocket closed with a close frame (then the socket)."""
    sock = WsSocket(ws_site.dial(ws_site.ws_port))
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert sock.recv(65536) == b""
    assert sock.closed_with == 1000
    assert any("not AMQP" in line for line in _amqp_lines(caplog))
    assert ws_site.srv.sessions == {}


# -- hostile bytes -------------------------------------------------------------------------


def _raw_until_closed(site, data: bytes) -> bytes:
    sock = site.dial()
    sock.sendall(data)
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, OSError):
            break
        if not chunk:
            break
        got += chunk
    sock.close()
    return got


def test_amqp_frames_before_the_sasl_outcome_are_refused(site, caplog):
    """The SASL header, then an AMQP open frame (type 0) where sasl-init belongs."""
    got = _raw_until_closed(site, amqp.SASL_HEADER + b"\0\0\0\x08\x02\0\0\0")
    assert got.startswith(amqp.SASL_HEADER)
    assert any("frame type 0 during SASL" in line for line in _amqp_lines(caplog))


def test_no_sasl_layer_is_anonymous_and_needs_the_put_token(site, caplog):
    """An AMQP header first (the Node SDK's rhea sends no SASL for SAS devices): served as
    ANONYMOUS, so only $cbs until a put-token."""
    client = Client(site.dial(), mech="")
    link = client.sender(f"/devices/{DEVICE}/messages/events")
    client.run_until(lambda: link.state & Endpoint.REMOTE_CLOSED, "the link refused")
    assert link.remote_condition.name == "amqp:unauthorized-access"
    assert client.put_token()["status-code"] == 200
    assert DEVICE in site.srv.sessions


def test_garbage_is_refused_and_the_next_child_served(site, caplog):
    got = _raw_until_closed(site, b"GET / HTTP/1.1\r\n\r\n")
    assert got == b""
    assert any("not AMQP" in line for line in _amqp_lines(caplog))
    assert Client(site.dial()).put_token()["status-code"] == 200


def test_an_oversized_sasl_frame_is_refused(site, caplog):
    frame = (100000).to_bytes(4, "big") + b"\x02\x01\0\0"
    got = _raw_until_closed(site, amqp.SASL_HEADER + frame)
    assert got.startswith(amqp.SASL_HEADER)  # the mechanisms, then the close
    assert any("SASL frame of 100000 bytes" in line for line in _amqp_lines(caplog))


def test_an_amqp_frame_over_the_max_frame_size_is_a_framing_error(site, caplog):
    """After the header, an open frame claiming more than the engine's max-frame-size."""
    frame = (amqp.MAX_FRAME * 4).to_bytes(4, "big") + b"\x02\0\0\0" + b"\0" * 64
    got = _raw_until_closed(site, amqp.AMQP_HEADER + frame)
    assert got.startswith(amqp.AMQP_HEADER)  # the engine's header, then its close
    assert any("framing-error" in line for line in _amqp_lines(caplog))
    assert Client(site.dial()).put_token()["status-code"] == 200  # and the head still serves


def test_silence_before_authentication_is_cut(site, caplog):
    got = _raw_until_closed(site, amqp.SASL_HEADER)  # and then nothing, until the deadline
    assert got.startswith(amqp.SASL_HEADER)
    assert any("connect_timeout_secs" in line for line in _amqp_lines(caplog))


@pytest.fixture(autouse=True)
def _journal_at_warning(caplog):
    caplog.set_level(logging.INFO)


# -- to the child --------------------------------------------------------------------------


def _c2d_client(site) -> tuple[Client, object]:
    client = Client(site.dial())
    client.put_token()
    c2d = client.receiver(f"/devices/{DEVICE}/messages/devicebound")
    client.run_until(lambda: site.call(
        lambda: site.srv.sessions[DEVICE].subscribed(f"devices/{DEVICE}/messages/devicebound/x")),
        "the C2D link attached")
    return client, c2d


def _incoming(link):
    dlv = link.current
    if dlv is None or dlv.partial or not dlv.readable:
        return None
    msg = Message()
    msg.decode(link.recv(dlv.pending))
    link.advance()
    return dlv, msg


def test_c2d_goes_out_with_its_properties_and_accept_completes(site):
    client, c2d = _c2d_client(site)
    acked: list[int] = []
    topic = f"devices/{DEVICE}/messages/devicebound/valve=3&$.mid=c2d-1&$.to=%2Fdevices%2Fx"
    site.call(site.srv.sessions[DEVICE].deliver, topic, b"open valve", 1,
              lambda: acked.append(1))
    dlv, msg = client.run_until(lambda: _incoming(c2d), "the C2D message")
    assert msg.body == b"open valve"
    assert msg.properties == {"valve": "3"}
    assert msg.id == "c2d-1"
    assert not acked  # not until the child settles it
    dlv.update(Delivery.ACCEPTED)
    dlv.settle()
    client.poll()
    wait_until(lambda: acked, what="the hub's acknowledgement")


def test_a_released_c2d_message_comes_again(site):
    client, c2d = _c2d_client(site)
    acked: list[int] = []
    topic = f"devices/{DEVICE}/messages/devicebound/n=1"
    site.call(site.srv.sessions[DEVICE].deliver, topic, b"again", 1, lambda: acked.append(1))
    dlv, _ = client.run_until(lambda: _incoming(c2d), "the first delivery")
    dlv.update(Delivery.RELEASED)  # abandon
    dlv.settle()
    dlv2, msg = client.run_until(lambda: _incoming(c2d), "the second delivery")
    assert msg.body == b"again" and not acked
    dlv2.update(Delivery.REJECTED)  # reject: gone for good
    dlv2.settle()
    client.poll()
    wait_until(lambda: acked, what="the hub's acknowledgement of the rejected message")


def test_unset_content_type_and_encoding_are_not_in_the_bag():
    """Proton reads an unset content type as symbol('None'): the bag leaves them out, and
    keeps the ones a child did set."""
    from gateway.child import amqp_dialect
    bare = Message()
    bare.decode(Message(body=b"x", properties={"k": "v"}).encode())
    assert amqp_dialect.property_bag(bare) == "k=v"
    typed = Message(body=b"x", content_type="application/json", content_encoding="utf-8")
    assert amqp_dialect.property_bag(typed) == "%24.ct=application%2Fjson&%24.ce=utf-8"


# -- modules (IoT Edge identities `{gw}/{module}`) ---------------------------------------------

GATEWAY, MODULE = "edge-1", "filter"
MODULE_ID = f"{GATEWAY}/{MODULE}"
MODULE_TOKEN = (f"SharedAccessSignature sr={HUB}%2Fdevices%2F{GATEWAY}%2Fmodules%2F{MODULE}"
                f"&sig=abc&se={2**31 - 1}")


def _module_client(site) -> Client:
    site.handler.good_password = MODULE_TOKEN.encode()
    client = Client(site.dial())
    answer = client.put_token(MODULE_TOKEN, f"{HUB}/devices/{GATEWAY}/modules/{MODULE}")
    assert answer["status-code"] == 200
    assert site.handler.connects[-1].client_id == MODULE_ID
    return client


def test_a_module_sends_to_an_output_on_its_events_link(site):
    """The Node SDK's ModuleClient: sender link /devices/{gw}/modules/{m}/messages/events, the
    output named by the iothub-outputname application property (the MQTT dialect's `$.on`)."""
    client = _module_client(site)
    link = client.sender(f"/devices/{GATEWAY}/modules/{MODULE}/messages/events")
    client.run_until(lambda: link.credit > 0, "credit on the module's events link")
    client.send(link, Message(body=b"21.5", properties={"iothub-outputname": "out1", "k": "v"}))
    client.poll()
    wait_until(lambda: site.handler.publishes, what="the module's publish at the handler")
    prefix = f"devices/{GATEWAY}/modules/{MODULE}/messages/events/"
    topic = site.handler.publishes[0].topic
    assert topic.startswith(prefix)
    assert dict(parse_qsl(topic[len(prefix):])) == {"$.on": "out1", "k": "v"}


def test_a_modules_inputs_arrive_on_its_receiver_link_named_by_annotation(site):
    """edgeHub serves a module's inputs on a receiver link at the same .../messages/events
    address, each message's input in the x-opt-input-name annotation; attaching that link is
    the module's subscription, so what waited for it goes out (the hub is told at once)."""
    client = _module_client(site)
    inputs = client.receiver(f"/devices/{GATEWAY}/modules/{MODULE}/messages/events")
    probe = f"devices/{GATEWAY}/modules/{MODULE}/inputs/x"
    client.run_until(lambda: site.call(lambda: site.srv.sessions[MODULE_ID].subscribed(probe)),
                     "the inputs link attached")
    assert site.handler.subscribed == [MODULE_ID]
    acked: list[int] = []
    site.call(site.srv.sessions[MODULE_ID].deliver,
              f"devices/{GATEWAY}/modules/{MODULE}/inputs/in1/kind=temp", b"21.5", 1,
              lambda: acked.append(1))
    dlv, msg = client.run_until(lambda: _incoming(inputs), "the input message")
    assert msg.body == b"21.5" and msg.properties == {"kind": "temp"}
    assert msg.annotations == {"x-opt-input-name": "in1"}
    dlv.update(Delivery.ACCEPTED)
    dlv.settle()
    client.poll()
    wait_until(lambda: acked, what="the hub's acknowledgement of the input")


def test_a_module_cannot_attach_another_modules_links(site, caplog):
    client = _module_client(site)
    other = client.sender(f"/devices/{GATEWAY}/modules/other/messages/events")
    client.run_until(lambda: other.remote_condition, "the refusal")
    assert other.remote_condition.name == "amqp:not-found"
    assert not site.handler.publishes
