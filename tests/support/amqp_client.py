"""Qpid Proton's client engine (Connection, Transport) over a test's TLS socket: what an AMQP
device does, driven step by step by a test (the unit tests of the head, the hostile catalogue).
"""

from __future__ import annotations

import ssl
import time

from proton import Collector, Connection, Delivery, Message, Transport

HUB = "hub.example.net"
DEVICE = "amqp-dev"
TOKEN = f"SharedAccessSignature sr={HUB}%2Fdevices%2F{DEVICE}&sig=abc&se={2**31 - 1}"


class Client:
    """Proton's client engine over the test's TLS socket: the test drives it until a
    condition holds (each read blocks until the gateway sends something)."""

    def __init__(self, sock: ssl.SSLSocket, mech: str = "ANONYMOUS", user: str = "",
                 password: str = "") -> None:
        self.sock = sock
        self.conn = Connection()
        if user:
            self.conn.user, self.conn.password = user, password
        self.transport = Transport()
        if mech:  # "": no SASL layer, the AMQP header first
            sasl = self.transport.sasl()
            sasl.allowed_mechs(mech)
            sasl.allow_insecure_mechs = True  # the TLS is the test socket's, not the engine's
        self.transport.bind(self.conn)
        self.collector = Collector()
        self.conn.collect(self.collector)
        self.conn.hostname = HUB
        self.conn.open()
        self.session = self.conn.session()
        self.session.open()
        self.eof = False
        self._cbs: tuple | None = None  # the $cbs sender and receiver, once attached
        self._put_tokens = 0

    def run_until(self, condition, what: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            self._drain_events()
            self._write()
            value = condition()
            if value:
                return value
            if self.eof or time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached (eof={self.eof}, "
                                     f"condition={self.transport.condition})")
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.eof = True
                self.transport.close_tail()
                continue
            self.transport.push(data)

    def poll(self) -> None:
        """Take in whatever the gateway has sent so far, without waiting for more."""
        self._write()
        self.sock.setblocking(False)
        try:
            while data := self.sock.recv(65536):
                self.transport.push(data)
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        finally:
            self.sock.setblocking(True)
        self._drain_events()

    def _write(self) -> None:
        while (n := self.transport.pending()) > 0:
            with_suppress = self.transport.peek(n)
            try:
                self.sock.sendall(bytes(with_suppress))
            except OSError:
                self.eof = True
                return
            self.transport.pop(n)

    def _drain_events(self) -> None:
        while self.collector.peek() is not None:
            self.collector.pop()

    def sender(self, address: str, name: str = ""):
        link = self.session.sender(name or f"s-{address}")
        link.target.address = address
        link.open()
        return link

    def receiver(self, address: str, name: str = "", credit: int = 10):
        link = self.session.receiver(name or f"r-{address}")
        link.source.address = address
        link.open()
        link.flow(credit)
        return link

    def send(self, link, msg: Message, tag: str = "t"):
        dlv = link.delivery(tag)
        link.send(msg.encode())
        link.advance()
        return dlv

    def put_token(self, token: str = TOKEN, name: str = f"{HUB}/devices/{DEVICE}"):
        """The SDKs' CBS exchange; returns the answer's application properties. A second
        call renews the token on the same $cbs links, as the SDKs do."""
        if self._cbs is None:
            self._cbs = self.sender("$cbs", "cbs-s"), self.receiver("$cbs", "cbs-r")
        requests, answers = self._cbs
        self._put_tokens += 1
        mid = f"put-{self._put_tokens}"
        msg = Message(id=mid, reply_to="cbs", address="$cbs", body=token, properties={
            "operation": "put-token", "type": "servicebus.windows.net:sastoken", "name": name})
        self.run_until(lambda: requests.credit > 0, "credit on $cbs")
        self.send(requests, msg, mid)
        answer = self.run_until(lambda: _received(answers), "the put-token answer")
        assert answer.correlation_id == mid
        return answer.properties


def _received(link) -> Message | None:
    dlv = link.current
    if dlv is None or dlv.partial or not dlv.readable:
        return None
    data = link.recv(dlv.pending)
    link.advance()
    msg = Message()
    msg.decode(data)
    dlv.update(Delivery.ACCEPTED)
    dlv.settle()
    return msg
