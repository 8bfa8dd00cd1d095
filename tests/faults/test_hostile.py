"""The hostile-input catalogue of docs/security.md against one running gatewayd.

Every case runs against the same daemon, one after another; after each one a well-behaved child
must still connect and get its PUBACK (the daemon stays up, other children are served). The
daemon's RSS is sampled all along: the module ends by checking the peak (memory stays bounded).
Case ids (H01...) are the catalogue's.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time

import pytest
from proton import Delivery, Endpoint, Message
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import CloseConnection

from gateway.child.auth import make_sas_token
from gateway.mqtt import codec
from gateway.mqtt.codec import ConnAck, PingResp, PubAck, SubAck
from tests.faults.hostile import (
    AMQP_HEADER,
    AMQP_SASL_HEADER,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    SASL_RESPONSE,
    amqp_frame,
    amqp_open,
    connect_packet,
    dial,
    raw_publish,
    read_http_head,
    read_packets,
    read_until_closed,
    rl,
    s16,
    sasl_init,
    telemetry,
    ws_frame,
    ws_upgrade,
)
from tests.support.amqp_client import Client as AmqpClient
from tests.support.clients import Child
from tests.support.gatewayd import HUB
from tests.support.wait import wait_until

RSS_GROWTH_LIMIT = 64 << 20  # peak over the baseline, through every flood of this module
PINGREQ = b"\xc0\x00"


def _served(site) -> None:
    """A good child connects, publishes QoS 1 and gets its PUBACK: the gateway still serves."""
    assert site.gw.proc.poll() is None, f"gatewayd died:\n{site.gw.log_text()[-3000:]}"
    child = Child("good-0", site.keys["good-0"], site.gw.plain_port)
    try:
        assert child.connect() == 0
        child.wait_acked([child.send(0).mid], timeout=10)
    finally:
        child.close()


@pytest.fixture(autouse=True)
def still_serving(site):
    yield
    _served(site)


def _connected(site, device: str = "victim-0", keepalive: int = 60, **kw) -> socket.socket:
    sock = dial(site.gw.plain_port, **kw)
    sock.sendall(connect_packet(device, site.keys[device], keepalive))
    (ack,) = read_packets(sock, 1)
    assert ack == ConnAck(False, 0)
    return sock


def _count(site, kind: str, n: int = 1) -> None:
    site.counts[kind] = site.counts.get(kind, 0) + n


# Cases where the gateway must close the connection; `True` means after a good CONNECT.
CLOSED = {
    "H01 remaining length in 5 bytes": (False, b"\x10\xff\xff\xff\xff\x7f"),
    "H02 270 MB declared before CONNECT": (False, b"\x10" + rl(268_435_455) + b"\x00\x04MQTT"),
    "H03 20 KB CONNECT (over the pre-auth cap)": (False, b"\x10" + rl(20_000) + b"\x00" * 64),
    "H04 first packet PUBLISH": (False, raw_publish(b"devices/victim-0/messages/events/")),
    "H05 first packet PINGREQ": (False, PINGREQ),
    "H06 first packet garbage": (False, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "H07 CONNECT with protocol MQIsdp level 3": (
        False, b"\x10" + rl(20) + s16(b"MQIsdp") + b"\x03\x02\x00\x3c" + s16(b"abcdef")),
    "H08 CONNECT client id length past the end": (
        False, b"\x10" + rl(14) + s16(b"MQTT") + b"\x04\x02\x00\x3c" + b"\xff\xff" + b"ab"),
    "H09 CONNECT invalid UTF-8 client id": (
        False, b"\x10" + rl(16) + s16(b"MQTT") + b"\x04\x02\x00\x3c" + s16(b"\xc3\x28ab")),
    "H10 CONNECT reserved flag bit": (
        False, b"\x10" + rl(14) + s16(b"MQTT") + b"\x04\x03\x00\x3c" + s16(b"ab")),
    "H11 second CONNECT": (True, None),
    "H12 reserved packet type 0": (True, b"\x00\x00"),
    "H13 reserved packet type 15": (True, b"\xf0\x00"),
    "H14 SUBSCRIBE with flags 0000": (True, b"\x80\x07\x00\x01" + s16(b"a/b") + b"\x00"[:0]),
    "H15 PUBLISH QoS 3": (True, b"\x36" + rl(5) + s16(b"a/b") + b"x"),
    "H16 PUBLISH topic length past the end": (True, b"\x32\x06\x01\x00abcd"),
    "H17 PUBLISH topic invalid UTF-8": (True, raw_publish(b"devices/victim-0/\xff\xfe")),
    "H18 PUBLISH topic with U+0000": (True, raw_publish(b"devices/victim-0/messages/\x00")),
    "H19 PUBLISH empty topic": (True, raw_publish(b"")),
    "H22 PUBLISH topic with +": (True, raw_publish(b"devices/victim-0/messages/events/+")),
    "H23 PUBLISH topic with #": (True, raw_publish(b"devices/victim-0/messages/#")),
    "H24 PUBLISH to $SYS": (True, raw_publish(b"$SYS/broker/uptime")),
    "H25 PUBLISH as another device": (True, raw_publish(b"devices/victim-1/messages/events/")),
    "H26 PUBLISH packet id 0": (True, raw_publish(b"devices/victim-0/messages/events/",
                                                  packet_id=0)),
    "H27 PUBLISH QoS 2": (True, b"\x34" + rl(40) + s16(b"devices/victim-0/messages/events/")
                          + b"\x00\x01" + b"{}" + b"\x00" * 3),
    "H28 PUBLISH over max_message_bytes": (
        True, raw_publish(b"devices/victim-0/messages/events/", b"x" * 300_000)),
    "H29 PUBLISH declared 200 MB, trickled": (True, b"\x32" + rl(200_000_000) + b"\x00\x21"),
    "H30 PUBACK with packet id 0": (True, b"\x40\x02\x00\x00"),
    "H31 PUBACK with 3 bytes of body": (True, b"\x40\x03\x00\x01\x00"),
    "H32 SUBSCRIBE with no filters": (True, b"\x82\x02\x00\x01"),
    "H33 SUBSCRIBE with a bad filter a/#/b": (True, b"\x82" + rl(10) + b"\x00\x01"
                                             + s16(b"a/#/b") + b"\x01"),
    "H34 server-only packet CONNACK": (True, b"\x20\x02\x00\x00"),
}


@pytest.mark.parametrize("case", list(CLOSED))
def test_closed(site, case):
    after_connect, data = CLOSED[case]
    if after_connect:
        sock = _connected(site)
        if data is None:  # H11
            data = connect_packet("victim-0", site.keys["victim-0"])
    else:
        sock = dial(site.gw.plain_port)
    with sock:
        sock.sendall(data[:7])
        for i in range(7, len(data), 4096):
            try:
                sock.sendall(data[i:i + 4096])
            except (BrokenPipeError, ConnectionResetError):
                break  # closed early: good
        got = read_until_closed(sock, 2.0)  # under the 3 s CONNECT deadline: refused at once
    _count(site, "catalogue")
    packets = codec.Decoder().feed(got)
    # Nothing is acknowledged: no PUBACK/SUBACK for a packet that broke the rules.
    assert not [p for p in packets if isinstance(p, (PubAck, SubAck))], packets
    if not after_connect:
        assert not any(p == ConnAck(False, 0) for p in packets), "accepted a bad CONNECT"


# Legal but extreme: stored and PUBACKed (the property bag is kept verbatim), line stays open.
ACCEPTED = {
    "H20 PUBLISH 65,535-byte topic": raw_publish(
        b"devices/victim-0/messages/events/" + b"a" * (65535 - 33)),
    "H21 PUBLISH 5,000 topic levels": raw_publish(
        b"devices/victim-0/messages/events/x" + b"/a" * 5000),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted(site, case):
    with _connected(site) as sock:
        sock.sendall(ACCEPTED[case] + PINGREQ)
        assert set(read_packets(sock, 2)) == {PubAck(1), PingResp()}
    _count(site, "catalogue")


def test_h35_puback_for_unknown_id_is_ignored(site):
    with _connected(site) as sock:
        sock.sendall(b"\x40\x02\x12\x34" + PINGREQ)
        assert read_packets(sock, 1) == [PingResp()]
    _count(site, "catalogue")


def test_h36_client_id_takeover(site):
    """A second connection with the same id wins; the first is closed (MQTT-3.1.4-2)."""
    first = _connected(site, "victim-2")
    second = _connected(site, "victim-2")
    read_until_closed(first, 5)
    second.sendall(telemetry("victim-2", 1, 7))
    assert read_packets(second, 1) == [PubAck(7)]
    first.close()
    second.close()
    _count(site, "catalogue")


def test_h37_empty_client_id_refused(site):
    with dial(site.gw.plain_port) as sock:
        sock.sendall(connect_packet("victim-0", site.keys["victim-0"], client_id=""))
        packets = codec.Decoder().feed(read_until_closed(sock))
    assert packets and isinstance(packets[0], ConnAck) and packets[0].return_code != 0
    _count(site, "catalogue")


def test_h38_expired_and_wrong_sas_refused(site):
    for packet in (connect_packet("victim-0", site.keys["victim-0"], expiry=int(time.time()) - 5),
                   connect_packet("victim-0", site.keys["victim-1"])):
        with dial(site.gw.plain_port) as sock:
            sock.sendall(packet)
            (ack,) = codec.Decoder().feed(read_until_closed(sock))
            assert ack.return_code in (4, 5)  # bad user name or password / not authorised
    _count(site, "catalogue", 2)


def test_h39_h40_slowloris_and_silent_tls_are_cut_at_the_deadline(site):
    """50 CONNECTs trickled a byte a second and 50 TLS handshakes that never start: all closed
    by the CONNECT/handshake deadline (listen.connect_timeout_secs, 3 s here), while a real
    child is served meanwhile."""
    slow = [dial(site.gw.plain_port) for _ in range(50)]
    silent = [dial(site.gw.tls_port) for _ in range(50)]  # TCP only: no ClientHello
    packet = connect_packet("victim-0", site.keys["victim-0"])
    start = time.monotonic()
    closed_at: list[float] = []

    def trickle(sock: socket.socket) -> None:
        for byte in packet:
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(1.0)
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        closed_at.append(time.monotonic() - start)

    threads = [threading.Thread(target=trickle, args=(s,)) for s in slow]
    for t in threads:
        t.start()
    _served(site)
    for sock in silent:
        read_until_closed(sock, 20)
    for t in threads:
        t.join(30)
    assert len(closed_at) == 50 and max(closed_at) < 3 + 3, closed_at
    for sock in slow + silent:
        sock.close()
    _count(site, "catalogue", 100)


def test_h41_pre_auth_connection_flood_is_capped(site):
    """Thousands of silent TCP connections: those past listen.max_connections + the handshake
    slack are dropped at once; the listener keeps accepting once they go."""
    socks = []
    for _ in range(400):
        socks.append(dial(site.gw.plain_port))
    dropped = 0
    for sock in socks:
        sock.settimeout(0.1)
        try:
            if sock.recv(1) == b"":
                dropped += 1
        except TimeoutError:
            pass
        except ConnectionResetError:
            dropped += 1
    for sock in socks:
        sock.close()
    assert dropped >= 400 - (16 + 64), dropped
    _count(site, "catalogue", 400)


def test_h42_huge_keepalive_accepted_and_served(site):
    """Keepalive 65,535 (18 h) is legal: accepted; the idle cap itself is in test_server_limits."""
    with _connected(site, keepalive=65535) as sock:
        sock.sendall(PINGREQ)
        assert read_packets(sock, 1) == [PingResp()]
    _count(site, "catalogue")


def test_h43_reader_that_never_reads_is_closed(site):
    """A child floods PINGREQs and never reads a PINGRESP: its unread output is bounded and it
    is closed after the drain deadline, not kept for ever."""
    sock = _connected(site, "victim-3", rcvbuf=4096)
    sock.settimeout(0.5)
    burst = PINGREQ * 32768
    sent = 0

    def closed() -> bool:
        nonlocal sent
        try:
            sent += sock.send(burst)
        except TimeoutError:
            return False  # the gateway stopped reading us: keep the pressure on until it closes
        except (BrokenPipeError, ConnectionResetError):
            return True
        return False

    # before its writes block the daemon answers megabytes of PINGREQs (the kernel's send
    # buffer): how long that takes is the machine's speed, so the deadline is generous
    wait_until(closed, timeout=120, interval=0, what="the gateway to close a child that never "
               "reads", show=lambda _: f"never closed; {sent} bytes sent")
    sock.close()
    _count(site, "catalogue")


def test_h44_connect_disconnect_churn(site):
    """2,000 connect/CONNECT/DISCONNECT cycles from 8 threads, half of them refused."""
    errors: list[str] = []

    def churn(n: int) -> None:
        for i in range(250):
            try:
                with dial(site.gw.plain_port) as sock:
                    device = f"victim-{n % 4}"
                    key = site.keys[device] if i % 2 else site.keys["good-3"]
                    sock.sendall(connect_packet(device, key))
                    ack = read_packets(sock, 1)
                    if i % 2:
                        sock.sendall(b"\xe0\x00")
            except OSError as exc:
                errors.append(repr(exc))
            if not ack:
                errors.append("no CONNACK")

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    _count(site, "churn", 2000)


def test_h45_random_mutations_of_a_good_session(site):
    """300 byte-level mutations of CONNECT+PUBLISH+SUBSCRIBE+PINGREQ, each on its own
    connection: whatever comes back decodes, and the daemon stays up."""
    rnd = random.Random(6)
    good = (connect_packet("victim-0", site.keys["victim-0"]) + telemetry("victim-0", 1, 1)
            + b"\x82" + rl(36) + b"\x00\x02" + s16(b"devices/victim-0/messages/devicebound/#")[:33]
            + PINGREQ)
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rnd.randint(1, 6)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        with dial(site.gw.plain_port) as sock:
            try:
                sock.sendall(bytes(data))
                sock.shutdown(socket.SHUT_WR)
                got = read_until_closed(sock, 15)
            except (BrokenPipeError, ConnectionResetError):
                continue  # closed while we wrote: nothing came back to check
        packets = codec.Decoder().feed(got)  # a ProtocolError fails the test
        assert b"".join(codec.encode(p) for p in packets) == got, (
            f"bytes left over that are not a whole packet: {got.hex()} from {bytes(data).hex()}")
    assert site.gw.proc.poll() is None, "the daemon stays up"
    _count(site, "mutations", 300)


# -- the 443 head: MQTT over WebSocket (issue 15) ---------------------------------------------


def _ws(site) -> socket.socket:
    return dial(site.ws_port, tls_ca=str(site.ca_file))


def _ws_upgraded(site, device: str = "victim-1") -> tuple[socket.socket, bytes]:
    """An upgraded, CONNECTed WebSocket child: the socket, and what followed the 101's head."""
    sock = _ws(site)
    sock.sendall(ws_upgrade() + ws_frame(connect_packet(device, site.keys[device])))
    status, head, rest = read_http_head(sock)
    assert status == 101, head
    return sock, rest


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n", 404),
    (ws_upgrade(key=None), 400),
    (ws_upgrade(version="8"), 426),
    (ws_upgrade(protocol="chat"), 400),
    (ws_upgrade(extra="X-Pad: " + "a" * 40000 + "\r\n"), 431),
    (b"\x00" * 64 + b"\r\n\r\n", 400),
], ids=["H48 not an upgrade", "H49 no key", "H49 version 8", "H49 unknown subprotocol",
        "H50 40 KB head", "H50 binary garbage"])
def test_h48_h50_bad_upgrades_are_answered_and_closed(site, request_bytes, status):
    """Each gets its status and a reason, the line closes, the journal says why."""
    with _ws(site) as sock:
        with contextlib.suppress(OSError):  # the gateway may close before a long head ends
            sock.sendall(request_bytes)
        got, head, _ = read_http_head(sock)
        assert got == status, head
        read_until_closed(sock)
    said = "HTTPS request" if b"Upgrade: websocket" not in request_bytes and status == 404 \
        else "WebSocket upgrade"
    wait_until(site.gw.log_text, lambda log: f"{said} refused ({status})" in log,
               timeout=10, what=f"the journal line for {status}", show=lambda t: t[-1500:])
    _count(site, "catalogue")


def _close_code(data: bytes) -> int | None:
    """The code of the gateway's close frame among the frames it sent."""
    client = WsConnection(ConnectionType.CLIENT)
    client.receive_data(data)
    codes = [e.code for e in client.events() if isinstance(e, CloseConnection)]
    return codes[0] if codes else None


# PINGREQs past listen.max_message_bytes + the MQTT header room, in one message announced at 1 TB
PINGS_PAST_THE_CAP = PINGREQ * ((262144 + 65544) // 2 + 1024)


@pytest.mark.parametrize(("frames", "code"), [
    (ws_frame(PINGS_PAST_THE_CAP, length=1 << 40), 1009),
    (ws_frame(b"{}", opcode=OP_TEXT), 1003),
    (ws_frame(telemetry("victim-1", 1, 1), mask=False), 1002),
    (ws_frame(b"\x30", fin=False) + ws_frame(b"", opcode=OP_CONT, fin=False) * 200, 1008),
    (ws_frame(b"x" * 126, opcode=OP_PING), 1002),
], ids=["H51 message past the cap", "H51 text frame", "H51 unmasked frame",
        "H51 200 fragments", "H51 126-byte ping"])
def test_h51_bad_frames_after_connect_close_the_child(site, frames, code):
    """Closed with the close code that says why, before the MQTT code sees the rest."""
    sock, rest = _ws_upgraded(site)
    with sock:
        with contextlib.suppress(OSError):
            sock.sendall(frames)
        got = read_until_closed(sock)
    assert _close_code(rest + got) == code
    _count(site, "catalogue")


def test_h52_truncated_frames_and_half_open_upgrades_are_cut_at_the_deadline(site):
    """40 upgrades that stop mid-head, and 40 children whose frame stops in its middle: all
    closed by listen.connect_timeout_secs (3 s here) or the child's keepalive; the daemon
    serves a good child meanwhile and forgets them all."""
    half_head = [_ws(site) for _ in range(40)]
    for sock in half_head:
        sock.sendall(b"GET /$iothub/websocket HTTP/1.1\r\nUpgrade: websocket\r\n")
    truncated = []
    for _ in range(40):
        sock = _ws(site)
        sock.sendall(ws_upgrade() + ws_frame(connect_packet("victim-2", site.keys["victim-2"]))
                     [:9])
        truncated.append(sock)
    _served(site)
    for sock in half_head + truncated:
        read_until_closed(sock, 20)
        sock.close()
    wait_until(lambda: site.gw.status()["connections"].get("mqtt-ws"), lambda n: n == 0,
               timeout=20, what="the WebSocket head's connections all gone")
    _count(site, "catalogue", 80)


def test_h53_websocket_child_is_served_and_pings_answered(site):
    """After all of the above, a good WebSocket child: CONNACK, PUBACK, pong."""
    sock, rest = _ws_upgraded(site, "good-1")
    with sock:
        sock.sendall(ws_frame(telemetry("good-1", 1, 5)) + ws_frame(b"hi", opcode=OP_PING))
        got = rest
        while b"\x8a\x02hi" not in got or b"\x40\x02\x00\x05" not in got:
            chunk = sock.recv(65536)
            assert chunk, f"closed early: {got!r}"
            got += chunk
    _count(site, "catalogue")


# -- the 5671 head: AMQP 1.0 (issue 15) -------------------------------------------------------


def _amqp(site) -> socket.socket:
    return dial(site.amqp_port, tls_ca=str(site.ca_file))


def _amqp_served(site, device: str = "good-2") -> None:
    """A good AMQP child: SASL ANONYMOUS, a put-token with its SAS token, a telemetry message
    with its accepted disposition."""
    assert site.gw.proc.poll() is None, f"gatewayd died:\n{site.gw.log_text()[-3000:]}"
    client = AmqpClient(_amqp(site))
    try:
        token = make_sas_token(HUB, device, site.keys[device], int(time.time()) + 3600)
        props = client.put_token(token=token, name=f"{HUB}/devices/{device}")
        assert props["status-code"] == 200, props
        link = client.sender(f"/devices/{device}/messages/events")
        client.run_until(lambda: link.credit > 0, "credit on the telemetry link")
        dlv = client.send(link, Message(body=b'{"ok": 1}'))
        client.run_until(lambda: dlv.remote_state, "the disposition", timeout=15)
        assert dlv.remote_state == Delivery.ACCEPTED
    finally:
        client.sock.close()


def _plain_forged(device: str) -> bytes:
    token = make_sas_token(HUB, device, "Zm9yZ2Vk" * 4, int(time.time()) + 3600)
    return b"\0" + f"{device}@sas.{HUB}".encode() + b"\0" + token.encode()


# each: the bytes, and what the journal line says; the gateway closes the connection
AMQP_CLOSED = {
    "H57 an HTTP request on 5671": (b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n", "not AMQP"),
    "H57 AMQP header version 2": (b"AMQP\x00\x02\x00\x00", "not AMQP with SASL"),
    "H58 SASL frame declared at 1 GB": (
        AMQP_SASL_HEADER + amqp_frame(b"", kind=1, size=1 << 30), "SASL frame of 1073741824"),
    "H58 AMQP frame over max-frame-size": (
        AMQP_HEADER + amqp_frame(b"\0" * 64, size=1 << 20), "framing-error"),
    "H58 AMQP frame declared shorter than its header": (
        AMQP_HEADER + amqp_frame(b"", size=4), "framing-error"),
    "H59 AMQP open where sasl-init belongs": (
        AMQP_SASL_HEADER + amqp_frame(b""), "frame type 0 during SASL"),
    "H59 AMQP header before the SASL outcome": (
        AMQP_SASL_HEADER + AMQP_HEADER + amqp_open(), "SASL frame of 1095586128"),
    "H59 sasl-response instead of sasl-init": (
        AMQP_SASL_HEADER + sasl_init("ANONYMOUS", descriptor=SASL_RESPONSE),
        "expected sasl-init"),
    "H59 sasl-init with mechanism EXTERNAL": (
        AMQP_SASL_HEADER + sasl_init("EXTERNAL"), "SASL mechanism 'EXTERNAL' refused"),
    "H59 sasl-init body that is not AMQP data": (
        AMQP_SASL_HEADER + amqp_frame(b"\xff" * 24, kind=1), "malformed SASL frame"),
    "H59 PLAIN with a user that is not device@sas.hub": (
        AMQP_SASL_HEADER + sasl_init("PLAIN", b"\0victim-0\0x"), "is not '{device id}@sas"),
    "H59 PLAIN with a forged token": (
        # good-3: no other case has it refused (its journal lines are rate-limited per cause)
        AMQP_SASL_HEADER + sasl_init("PLAIN", _plain_forged("good-3")),
        "child good-3 from 127.0.0.1"),
}


@pytest.mark.parametrize("case", list(AMQP_CLOSED))
def test_amqp_closed(site, case):
    """Each is closed with one journal line saying why; a good AMQP child is served after."""
    data, says = AMQP_CLOSED[case]
    with _amqp(site) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        read_until_closed(sock)
    wait_until(site.gw.log_text, lambda log: says in log, timeout=10,
               what=f"the journal line for {case!r}", show=lambda t: t[-1500:])
    _amqp_served(site)
    _count(site, "amqp")


def test_h58_truncated_frames_are_cut_at_the_deadline(site):
    """A sasl-init cut in its middle, and an open frame cut after its header (no SASL): the
    head waits for the rest no longer than listen.connect_timeout_secs (3 s here)."""
    socks = []
    for data in (AMQP_SASL_HEADER + sasl_init("ANONYMOUS")[:11], AMQP_HEADER + amqp_open()[:6]):
        sock = _amqp(site)
        sock.sendall(data)
        socks.append(sock)
    _amqp_served(site)  # served meanwhile
    for sock in socks:
        read_until_closed(sock, 15)
        sock.close()
    # one line for both: refusals are rate-limited per cause
    wait_until(site.gw.log_text, lambda log: "connect_timeout_secs (3 s)" in log,
               timeout=10, what="the deadline's journal line", show=lambda t: t[-1500:])
    _count(site, "amqp", 2)


def test_h60_links_before_the_put_token_are_refused_then_cut(site):
    """SASL ANONYMOUS, then links for telemetry and C2D without a put-token: each refused with
    amqp:unauthorized-access, nothing reaches the store, and the connection is cut at the
    deadline."""
    client = AmqpClient(_amqp(site))
    try:
        links = [client.sender("/devices/victim-3/messages/events"),
                 client.receiver("/devices/victim-3/messages/devicebound")]
        client.run_until(lambda: all(lk.state & Endpoint.REMOTE_CLOSED for lk in links),
                         "both links refused")
        assert {lk.remote_condition.name for lk in links} == {"amqp:unauthorized-access"}
        client.run_until(lambda: client.eof, "the connection cut at the deadline", timeout=15)
    finally:
        client.sock.close()
    assert "victim-3" not in site.gw.status()["child_listeners"]
    _count(site, "amqp", 2)


def test_h61_random_mutations_then_a_good_client(site):
    """100 byte-level mutations of a good preamble (SASL header, sasl-init ANONYMOUS, AMQP
    header, open), each on its own connection and then ended: every one is closed, the
    daemon stays up, and a good AMQP child is served after them."""
    rnd = random.Random(15)
    good = AMQP_SASL_HEADER + sasl_init("ANONYMOUS") + AMQP_HEADER + amqp_open()
    for _ in range(100):
        data = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        with _amqp(site) as sock:
            try:
                sock.sendall(bytes(data))
                sock.shutdown(socket.SHUT_WR)
                read_until_closed(sock, 15)
            except OSError:
                continue  # closed while we wrote
    assert site.gw.proc.poll() is None, "the daemon stays up"
    _amqp_served(site)
    _count(site, "amqp mutations", 100)


def test_h62_a_flood_of_half_open_connections_on_5671(site):
    """150 connections at once: 50 that never start TLS, 50 that stop after the SASL header,
    50 after the AMQP header. Those past listen.max_connections + 64 are dropped at once, the
    rest at the deadline; afterwards none is left and a good AMQP child is served."""
    socks = [dial(site.amqp_port) for _ in range(50)]
    for header in (AMQP_SASL_HEADER, AMQP_HEADER):
        for _ in range(50):
            try:
                sock = _amqp(site)
                sock.sendall(header)
            except OSError:
                continue  # dropped at the cap during the handshake
            socks.append(sock)
    for sock in socks:
        with contextlib.suppress(OSError):
            read_until_closed(sock, 20)
        sock.close()
    wait_until(lambda: site.gw.status()["connections"].get("amqp"), lambda n: n == 0,
               timeout=20, what="the AMQP head's connections all gone")
    _amqp_served(site)
    _count(site, "amqp flood", 150)


def test_zz_memory_stayed_bounded(site):
    """Last in the module: the peak RSS through every flood above stayed under the bound."""
    growth = site.rss.peak - site.rss.baseline
    print(f"\nhostile inputs tried: {site.counts} = {sum(site.counts.values())}; "
          f"RSS baseline {site.rss.baseline >> 20} MiB, peak {site.rss.peak >> 20} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth >> 20} MiB"
