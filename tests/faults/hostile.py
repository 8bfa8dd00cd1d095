"""Raw-socket tools for the hostile-input cases: hand-made MQTT, WebSocket and AMQP bytes, and
what to expect back."""

from __future__ import annotations

import socket
import ssl
import time

from gateway.child.auth import make_sas_token
from gateway.mqtt import codec
from gateway.mqtt.codec import Connect, Publish
from tests.support.gatewayd import HUB


def rl(n: int) -> bytes:
    """The remaining-length bytes of `n`, without the 268,435,455 check (hostile cases need it)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def connect_packet(device: str, key: str, keepalive: int = 60, client_id: str | None = None,
                   expiry: int | None = None) -> bytes:
    token = make_sas_token(HUB, device, key, expiry or int(time.time()) + 3600)
    return codec.encode(Connect(
        client_id if client_id is not None else device,
        username=f"{HUB}/{device}/?api-version=2021-04-12",
        password=token.encode(), keepalive=keepalive, clean_session=True,
    ))


def raw_publish(topic: bytes, payload: bytes = b"{}", qos: int = 1, packet_id: int = 1) -> bytes:
    """A PUBLISH from raw topic bytes: invalid UTF-8, U+0000 and wildcards get through."""
    body = s16(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return bytes([0x30 | qos << 1]) + rl(len(body)) + body


def telemetry(device: str, i: int, packet_id: int) -> bytes:
    return codec.encode(Publish(f"devices/{device}/messages/events/", b'{"i": %d}' % i, qos=1,
                                packet_id=packet_id))


def dial(port: int, tls_ca: str | None = None, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    if tls_ca:
        ctx = ssl.create_default_context(cafile=tls_ca)
        sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """Everything the gateway sends until it closes; AssertionError if it keeps the line open."""
    deadline = time.monotonic() + timeout
    got = bytearray()
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return bytes(got)
        except TimeoutError:
            break
        if not chunk:
            return bytes(got)
        got += chunk
    raise AssertionError(f"gateway kept the connection open {timeout} s (got {len(got)} bytes)")


def read_packets(sock: socket.socket, want: int, timeout: float = 10.0) -> list:
    """Read until `want` packets arrived (or the line closed): the decoded packets."""
    decoder = codec.Decoder()
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += decoder.feed(chunk)
    return out


# -- MQTT over WebSocket (the 443 head) ---------------------------------------------------------

WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example key
WS_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # and its Sec-WebSocket-Accept
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0x0, 0x1, 0x2, 0x8, 0x9


def ws_upgrade(path: str = "/$iothub/websocket", protocol: str | None = "mqtt",
               key: str | None = WS_KEY, version: str = "13", method: str = "GET",
               extra: str = "") -> bytes:
    """The SDKs' upgrade request (paho's headers), with any one of them changed or left out."""
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway:443", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Version: {version}"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def ws_frame(payload: bytes, opcode: int = OP_BINARY, fin: bool = True, mask: bool = True,
             length: int | None = None) -> bytes:
    """A client frame; `length` declares a size other than the payload's (truncated frames,
    frames announced far larger than what follows)."""
    n = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not mask:
        return bytes(head) + payload
    key = bytes([0x37, 0xFA, 0x21, 0x3D])
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_http_head(sock: socket.socket, timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    """(status, head, what followed it) of the gateway's answer to an upgrade."""
    sock.settimeout(timeout)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    head, _, rest = got.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, head, rest


# -- AMQP 1.0 (the 5671 head) -------------------------------------------------------------------

AMQP_SASL_HEADER = b"AMQP\x03\x01\x00\x00"
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_INIT, SASL_RESPONSE = 0x41, 0x43


def amqp_frame(body: bytes, kind: int = 0, size: int | None = None) -> bytes:
    """A frame on channel 0 (kind 0: AMQP, 1: SASL); `size` declares another length."""
    n = 8 + len(body) if size is None else size
    return n.to_bytes(4, "big") + bytes([2, kind, 0, 0]) + body


def sasl_init(mechanism: str, response: bytes = b"", descriptor: int = SASL_INIT) -> bytes:
    """A SASL frame with sasl-init's described list (mechanism, initial-response), by hand:
    descriptor ulong, list8, sym8, vbin8."""
    mech = mechanism.encode()
    fields = b"\xa3" + bytes([len(mech)]) + mech + b"\xa0" + bytes([len(response)]) + response
    body = b"\x00\x53" + bytes([descriptor]) + b"\xc0" + bytes([len(fields) + 1, 2]) + fields
    return amqp_frame(body, kind=1)


def amqp_open() -> bytes:
    """An AMQP open frame (container id "h"), the first frame after the AMQP header."""
    fields = b"\xa1\x01h"
    return amqp_frame(b"\x00\x53\x10\xc0" + bytes([len(fields) + 1, 1]) + fields)
