"""The 5671 head: AMQP 1.0 children, in the IoT Hub device dialect, on the same hub as MQTT.

Apache Qpid Proton's engine does the AMQP framing and state (Transport, Connection, Collector:
bytes in, events out), driven from this connection's read loop on the asyncio loop; no reactor
and no thread. The SASL layer in front of it is this module's own (three small frames), so that
no frame of SASL's reaches the engine and no AMQP frame comes before SASL's outcome. ANONYMOUS,
or no SASL layer at all (an AMQP header first: the Node SDK's rhea), is followed by a CBS
put-token on `$cbs` (the SDKs' SAS path), and nothing but `$cbs` is served before it, within
listen.connect_timeout_secs; PLAIN carries `{device}@sas.{hub}` and the token. An X.509 child
(listen.client_ca_file set, its certificate presented in the TLS handshake) needs no token: with
EXTERNAL (offered only to a peer with a certificate), ANONYMOUS or no SASL layer, its first link
names the identity (the Node SDK sends no put-token and no SASL for X.509) and the certificate's
thumbprint decides it; an authzid in EXTERNAL's response names it at once. All are decided by
the handler's authenticate(), with the offline rules of the MQTT path, through the server's
admit() (the connection cap, takeover). A new put-token renews the token; one that lapses closes
the connection (a certificate has no lapse here: its validity is the TLS handshake's).

Everything else is the MQTT path's: each AMQP request becomes the PUBLISH an MQTT child would
have sent (amqp_dialect.py), handed to the same Handler, and what the hub delivers to a topic
goes out on the matching link. The promise stays: a telemetry message's accepted disposition
is sent once the message is safe (the release of `hold_puback`), never before.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from proton import (
    Collector,
    Condition,
    Connection,
    Data,
    Delivery,
    Endpoint,
    Link,
    Message,
    Transport,
    symbol,
)
from proton import Event as PnEvent

from gateway import sockets
from gateway.child import amqp_dialect as dia
from gateway.child.limits import CONFIG_KEY, ChildRates
from gateway.errors import PeerError
from gateway.log import Event, event
from gateway.mqtt.codec import Connect, Publish

LISTENER = "amqp"  # the head's name in the status and the journal
WS_LISTENER = "amqp-ws"  # AMQP over WebSocket on the 443 head (subprotocol AMQPWSB10)
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_FRAME_MAX = 8192  # a SAS token and a user name; nothing legitimate is larger
MAX_FRAME = 65536  # the engine's max-frame-size: larger frames are a framing error
MAX_SESSIONS = 4  # the SDKs use one
MAX_LINKS = 16  # CBS, telemetry, C2D, twin and method pairs: 8
CREDIT = 32  # deliveries a child may have in flight on one link
IDLE_TIMEOUT_SECS = 120.0  # the engine closes a peer silent for this long (heartbeats count)
READ_CHUNK = 65536
WRITE_BUFFER_MAX = 1 << 20
MECHANISMS = ("ANONYMOUS", "PLAIN")
CERT_MECHANISM = "EXTERNAL"  # offered to a TLS peer that presented a client certificate
SASL_OK, SASL_AUTH = 0, 1
PUT_TOKEN_TYPES = ("servicebus.windows.net:sastoken", "azure-devices.net:sastoken")
CORRELATION = "com.microsoft:channel-correlation-id"


class Refusal(PeerError):
    """The peer broke a rule of the head; the connection closes with one journal line."""


class _Logged(dia.AmqpRefused):
    """A refusal whose journal line is written already (the handler's verdict)."""


class AmqpConnection:
    """One AMQP child: SASL, then the engine; shaped like ChildConnection for the hub
    (`device_id`, `listener`, `is_open`, `subscribed`, `deliver`, `close`, `hold_puback`)."""

    def __init__(self, server: Any, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, listener: str = LISTENER) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer  # a socket's, or websocket.WsWriter on the 443 head
        self.listener = listener
        self.device_id = ""
        self.peer = sockets.peer_name(writer)
        self.connected_at = time.time()
        self.close_reason = ""
        self.outstanding = 0
        self.received = 0
        self.rates = ChildRates(server.limits.twin_updates_per_sec,
                                server.limits.routed_messages_per_sec, time.monotonic())
        self._resume_at = 0.0
        self._room = asyncio.Event()
        self._room.set()
        self._buf = bytearray()  # SASL bytes not yet parsed
        self._phase = "header"  # header, init, amqp-header, engine, closed
        self._deadline = time.monotonic() + server.connect_timeout
        self._engine: Transport | None = None
        self._conn: Connection | None = None
        self._collector: Collector | None = None
        self._roles: dict[Link, str] = {}
        self._pending_out: dict[Link, list[tuple[Message, Callable[[str], None] | None]]] = {}
        self._incoming: dict[int, Delivery] = {}  # hold_puback keys of deliveries in the hub
        self._keys = itertools.count(1)
        self._twin_rids: dict[str, object] = {}  # rid given to the hub -> the SDK's correlation
        self._desired_on = False
        self._token_timer: asyncio.TimerHandle | None = None
        self._flush_scheduled = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(self) -> None:
        try:
            await self._loop()
        except (Refusal, dia.AmqpRefused) as exc:
            self._refuse(str(exc))
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass
        finally:
            await self._finish()

    async def _loop(self) -> None:
        while self._phase != "closed":
            data = await self._read()
            if not data:
                return
            self._receive(data)
            self.flush()
            await self._paced()

    async def _read(self) -> bytes:
        """The next chunk; b"" once the peer or the engine is done. Before authentication
        the whole of SASL and the put-token must fit in listen.connect_timeout_secs."""
        while True:
            authenticated = self._phase == "engine" and self.device_id
            if not authenticated:
                timeout = self._deadline - time.monotonic()
                if timeout <= 0:
                    raise Refusal(f"not authenticated within listen.connect_timeout_secs "
                                  f"({self._server.connect_timeout:g} s): SASL and a put-token")
            else:
                timeout = self._tick() or None
            try:
                return await asyncio.wait_for(self._reader.read(READ_CHUNK), timeout)
            except TimeoutError:
                if not authenticated:
                    continue  # the deadline check above says why
                self._tick()  # the engine closes an idle peer, and says so in its output
                self.flush()
                if self._phase == "closed":
                    return b""

    def _tick(self) -> float:
        """The engine's timers (heartbeats, idle timeout): seconds until the next one."""
        now = time.monotonic()
        deadline = self._engine.tick(now)
        self._pump()
        return max(deadline - now, 0.01) if deadline else 0.0

    async def _paced(self) -> None:
        """As on the MQTT path: a child at its bound of outstanding requests, or over its rate,
        is not read until there is room; its flood waits in its own TCP window."""
        if not self._room.is_set():
            await self._room.wait()
        if self._resume_at:
            delay = self._resume_at - time.monotonic()
            self._resume_at = 0.0
            if delay > 0:
                await asyncio.sleep(delay)

    async def _finish(self) -> None:
        self._phase = "closed"
        self._room.set()
        if self._token_timer is not None:
            self._token_timer.cancel()
        self._server._forget(self)
        with contextlib.suppress(Exception):
            self.flush()
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        sockets.abort(self._writer.transport)
        if self.device_id and self.close_reason:
            event(Event.CHILD_CLOSED, f"child {self.device_id}: disconnected: {self.close_reason}",
                  device_id=self.device_id)

    def _refuse(self, reason: str) -> None:
        """One journal line per refusal, rate-limited per peer and cause like the MQTT path's."""
        who = self.device_id or f"peer {self.peer}"
        self.close_reason = reason
        self._server.log_limited(Event.AMQP_REFUSED, f"child {who}: AMQP: {reason}",
                                 device_id=self.device_id, cause=reason[:24])

    def close(self, reason: str) -> None:
        """Close from elsewhere (takeover, registry change, shutdown, a lapsed token)."""
        if not self.close_reason:
            self.close_reason = reason
        if self._conn is not None and self._conn.state & Endpoint.LOCAL_ACTIVE:
            self._conn.condition = Condition("amqp:connection:forced", reason)
            self._conn.close()
            self._pump()
        self._phase = "closed"
        self._room.set()
        self.flush()
        self._writer.close()

    # -- SASL --------------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        if self._phase == "engine":
            self._push(data)
            return
        self._buf += data
        if self._phase == "header":
            self._sasl_header()
        if self._phase == "init":
            self._sasl_init()
        if self._phase == "amqp-header" and len(self._buf) >= 8:
            if bytes(self._buf[:8]) != AMQP_HEADER:
                got = bytes(self._buf[:8])
                raise Refusal(f"after SASL the AMQP header was expected, not {got!r}")
            rest = bytes(self._buf)
            self._buf.clear()
            self._start_engine()
            self._push(rest)

    def _sasl_header(self) -> None:
        if len(self._buf) < 8:
            if not SASL_HEADER.startswith(bytes(self._buf[:8])) and not AMQP_HEADER.startswith(
                    bytes(self._buf)):
                raise Refusal(f"not AMQP: the connection began with {bytes(self._buf)!r}")
            return
        head = bytes(self._buf[:8])
        if head == AMQP_HEADER:
            # no SASL layer at all: the Node SDK's way (rhea), as good as ANONYMOUS; the
            # put-token on $cbs must still come within the deadline, and nothing else is
            # served before it
            self._phase = "amqp-header"
            return
        if head != SASL_HEADER:
            raise Refusal(f"not AMQP with SASL: the connection began with {head!r}")
        del self._buf[:8]
        self._write(SASL_HEADER + _sasl_frame(0x40, _mechanisms(self._offered())))
        self._phase = "init"

    def _sasl_init(self) -> None:
        body = _take_frame(self._buf, SASL_FRAME_MAX)
        if body is None:
            return
        fields = _described(body, 0x41, "sasl-init")
        mechanism = str(fields[0]) if fields else ""
        response = bytes(fields[1]) if len(fields) > 1 and fields[1] is not None else b""
        if mechanism == "ANONYMOUS":
            ok = True  # who it is comes with the put-token, within connect_timeout_secs
        elif mechanism == "PLAIN":
            ok = self._plain(response)
        elif mechanism == CERT_MECHANISM and mechanism in self._offered():
            ok = self._external(response)
        else:
            self._write(_sasl_frame(0x44, _outcome(SASL_AUTH)))
            raise Refusal(f"SASL mechanism {mechanism!r} refused; offered: "
                          f"{', '.join(self._offered())}")
        self._write(_sasl_frame(0x44, _outcome(SASL_OK if ok else SASL_AUTH)))
        if not ok:
            self._phase = "closed"
            return
        self._phase = "amqp-header"

    def _plain(self, response: bytes) -> bool:
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise Refusal("SASL PLAIN response is not 'authzid NUL user NUL password'")
        user, token = parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
        audience = dia.parse_plain_user(user, token)
        return self._authenticate(audience, token)

    def _offered(self) -> tuple[str, ...]:
        return (*MECHANISMS, CERT_MECHANISM) if self.peer_cert() else MECHANISMS

    def _external(self, response: bytes) -> bool:
        """EXTERNAL: the TLS client certificate is the credential. An authzid (the identity)
        is decided now; without one the first link names the identity."""
        who = response.decode("utf-8", "replace").strip()
        return self._authenticate_cert(who) if who else True

    # -- authentication ----------------------------------------------------------------------

    def _authenticate_cert(self, who: str) -> bool:
        """An X.509 child: `who` is authenticated by the TLS client certificate alone."""
        return self._authenticate(dia.Audience(self._hub_host(), who), None)

    def _hub_host(self) -> str:
        """The username's host for a token-less identity: the hub the gateway serves (the
        handler's; the AMQP open names the gateway host the child dialled instead)."""
        host = getattr(self._server.handler, "hub_hostname", "")
        if not host and self._conn is not None:
            host = self._conn.remote_hostname or ""
        return host

    def _authenticate(self, audience: dia.Audience, token: str | None) -> bool:
        """A first token (or, with None, the client certificate) admits the connection (cap,
        handler, takeover); a later token for the same identity renews it. One identity per
        connection."""
        connect = Connect(audience.identity, audience.username,
                          None if token is None else token.encode())
        if self.device_id:
            if audience.identity != self.device_id:
                self._server.log_limited(
                    Event.AMQP_REFUSED,
                    f"child {self.device_id}: put-token for {audience.identity} refused: one "
                    "identity per AMQP connection; open a connection per device",
                    device_id=self.device_id, cause="identity")
                return False
            verdict = self._server.handler.authenticate(connect, self.peer_cert())
            if not verdict.ok:
                self._server.log_limited(
                    Event.CHILD_REFUSED,
                    f"child {self.device_id}: token renewal refused: {verdict.reason}",
                    device_id=self.device_id, cause=verdict.reason.split(":")[0][:32])
                return False
        else:
            verdict = self._server.admit(self, connect)
            if not verdict.ok:
                self._server.log_limited(
                    Event.CHILD_REFUSED,
                    f"child {audience.identity} from {self.peer}: refused (AMQP): "
                    f"{verdict.reason}",
                    device_id=audience.identity, cause=verdict.reason.split(":")[0][:32])
                return False
            self.device_id = audience.identity
            how = "" if token is not None else ", X.509"
            event(Event.CHILD_CONNECTED,
                  f"child {self.device_id}: connected from {self.peer} ({self.listener}{how})",
                  device_id=self.device_id)
        if token is not None:
            self._watch_expiry(token)
        return True

    def _watch_expiry(self, token: str) -> None:
        """Close the connection when the token lapses without a new put-token (as IoT Hub)."""
        if self._token_timer is not None:
            self._token_timer.cancel()
            self._token_timer = None
        expiry = dia.token_expiry(token)
        if expiry is None:
            return
        delay = max(expiry - time.time(), 0.0)
        self._token_timer = asyncio.get_running_loop().call_later(
            delay, self.close, "the SAS token expired without a new put-token")

    def peer_cert(self) -> bytes | None:
        return sockets.peer_cert(self._writer)

    # -- the engine --------------------------------------------------------------------------

    def _start_engine(self) -> None:
        engine = Transport(Transport.SERVER)
        engine.max_frame_size = MAX_FRAME
        engine.channel_max = MAX_SESSIONS - 1
        engine.idle_timeout = IDLE_TIMEOUT_SECS
        conn = Connection()
        conn.container = "gatewayd"
        collector = Collector()
        conn.collect(collector)
        engine.bind(conn)
        self._engine, self._conn, self._collector = engine, conn, collector
        self._phase = "engine"

    def _push(self, data: bytes) -> None:
        """Hand bytes to the engine as fast as it takes them, handling its events between."""
        view = memoryview(data)
        while view:
            room = self._engine.capacity()
            if room < 0:
                return  # the engine's input is closed; the output says why
            if room == 0:
                self._events()
                self._pump()
                if self._engine.capacity() == 0:
                    raise Refusal("the AMQP engine takes no more input")
                continue
            n = min(room, len(view))
            self._engine.push(bytes(view[:n]))
            view = view[n:]
            self._events()
        self._events()
        self._pump()

    def _pump(self) -> None:
        """The engine's output to the socket; a closed output ends the connection."""
        engine = self._engine
        if engine is None:
            return
        while True:
            n = engine.pending()
            if n <= 0:
                break
            self._write(bytes(engine.peek(n)))
            engine.pop(n)
        if n < 0 and self._phase == "engine":
            cond = engine.condition
            if cond is not None and not self.close_reason:
                self._refuse(f"{cond.name}: {cond.description}")
            self._phase = "closed"

    def _events(self) -> None:
        collector = self._collector
        while (ev := collector.peek()) is not None:
            try:
                self._on_event(ev)
            finally:
                collector.pop()

    def _on_event(self, ev: PnEvent) -> None:
        kind = ev.type
        if kind == PnEvent.CONNECTION_REMOTE_OPEN:
            ev.connection.open()
        elif kind == PnEvent.SESSION_REMOTE_OPEN:
            ev.session.incoming_capacity = self._server.max_message_bytes + 2 * MAX_FRAME
            ev.session.open()
        elif kind == PnEvent.LINK_REMOTE_OPEN:
            self._attach(ev.link)
        elif kind == PnEvent.LINK_FLOW and ev.link.is_sender:
            self._send_waiting(ev.link)
        elif kind == PnEvent.DELIVERY:
            if ev.link.is_receiver:
                self._incoming_delivery(ev.delivery)
            else:
                self._outgoing_settled(ev.delivery)
        elif kind == PnEvent.LINK_REMOTE_CLOSE:
            self._detach(ev.link)
        elif kind == PnEvent.SESSION_REMOTE_CLOSE:
            ev.session.close()
        elif kind == PnEvent.CONNECTION_REMOTE_CLOSE:
            ev.connection.close()
            self.close_reason = self.close_reason or "the child closed the AMQP connection"

    # -- links -------------------------------------------------------------------------------

    def _attach(self, link: Link) -> None:
        """Each link's role from its address; refused with an error condition (and a journal
        line) when it is not part of the dialect, names another identity, or comes before
        the child has authenticated."""
        address = (link.remote_target if link.is_receiver else link.remote_source).address or ""
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        try:
            if len(self._roles) >= MAX_LINKS:
                raise dia.AmqpRefused("amqp:resource-limit-exceeded",
                                      f"more than {MAX_LINKS} links on one connection")
            if address != dia.CBS and not self.device_id:
                self._link_authenticates(address)
            role = dia.link_role(self.device_id, address, link.is_receiver)
        except dia.AmqpRefused as exc:
            if not isinstance(exc, _Logged):
                self._server.log_limited(
                    Event.AMQP_REFUSED,
                    f"child {self.device_id or 'peer ' + self.peer}: link refused: {exc}",
                    device_id=self.device_id, cause=exc.condition)
            link.open()
            link.condition = Condition(exc.condition, str(exc))
            link.close()
            return
        self._roles[link] = role
        link.max_message_size = self._server.max_message_bytes
        link.open()
        if link.is_receiver:
            link.flow(CREDIT)
        else:
            self._pending_out.setdefault(link, [])
        if role == dia.C2D:  # what waited (C2D, a module's inputs) goes out now, as after a SUBACK
            self._server.handler.on_subscribed(self)

    def _link_authenticates(self, address: str) -> None:
        """The first link of a child with a client certificate and no put-token names who
        it is (an X.509 child); without a certificate, a link before a put-token is refused."""
        if self.peer_cert() is None:
            raise dia.AmqpRefused("amqp:unauthorized-access",
                                  f"link to {address!r} before a put-token on $cbs")
        who = dia.address_identity(address)
        if not who:
            raise dia.AmqpRefused("amqp:unauthorized-access",
                                  f"link to {address!r} names no device before a put-token")
        if not self._authenticate_cert(who):
            raise _Logged("amqp:unauthorized-access",
                          f"client certificate refused for {who!r} (see the journal)")

    def _detach(self, link: Link) -> None:
        role = self._roles.pop(link, None)
        # unsent and unsettled C2D messages stay in the hub's queue and window; a new
        # connection gets them again (a new link on the same connection does not, yet)
        self._pending_out.pop(link, None)
        link.close()
        if role == dia.TWIN_ANSWERS:
            self._desired_on = False

    def _link(self, role: str) -> Link | None:
        for link, r in self._roles.items():
            if r == role and link.state & Endpoint.REMOTE_ACTIVE:
                return link
        return None

    # -- from the child ----------------------------------------------------------------------

    def _incoming_delivery(self, dlv: Delivery) -> None:
        link = dlv.link
        limit = self._server.max_message_bytes
        if dlv.pending > limit + 1024:  # the envelope around the payload counts a little
            self._close_link(link, "amqp:link:message-size-exceeded",
                             f"message over listen.max_message_bytes ({limit})")
            return
        if not dlv.readable or dlv.partial:
            return
        data = link.recv(dlv.pending)
        link.advance()
        role = self._roles.get(link)
        if role is None:
            dlv.settle()
            return
        self.received += 1
        try:
            msg = Message()
            msg.decode(data)
            self._request(role, dlv, msg)
        except dia.AmqpRefused as exc:
            self._reject(dlv, exc.condition, str(exc))
        except PeerError as exc:  # the handler's Refusal (a full disk, a topic) or a bad message
            self._reject(dlv, "amqp:precondition-failed", str(exc))
        except Exception as exc:  # proton's DecodeError and friends: a malformed message
            if type(exc).__module__.startswith("proton"):
                self._reject(dlv, "amqp:decode-error", f"malformed message: {exc}")
            else:
                raise

    def _reject(self, dlv: Delivery, condition: str, reason: str) -> None:
        self._server.log_limited(
            Event.AMQP_REFUSED, f"child {self.device_id or self.peer}: message rejected: {reason}",
            device_id=self.device_id, cause=condition)
        dlv.local.condition = Condition(condition, reason)
        dlv.update(Delivery.REJECTED)
        dlv.settle()
        self._credit(dlv.link)

    def _close_link(self, link: Link, condition: str, reason: str) -> None:
        self._server.log_limited(
            Event.AMQP_REFUSED, f"child {self.device_id or self.peer}: link closed: {reason}",
            device_id=self.device_id, cause=condition)
        self._roles.pop(link, None)
        link.condition = Condition(condition, reason)
        link.close()

    def _request(self, role: str, dlv: Delivery, msg: Message) -> None:
        if role == dia.CBS_REQUESTS:
            self._put_token(dlv, msg)
        elif role == dia.TELEMETRY:
            topic = dia.telemetry_topic(self.device_id, msg)
            self._publish(dlv, topic, dia.body_bytes(msg))
        elif role == dia.TWIN_REQUESTS:
            self._twin_request(dlv, msg)
        elif role == dia.METHOD_ANSWERS:
            self._publish(dlv, dia.method_answer_topic(msg), dia.body_bytes(msg))
        else:
            raise dia.AmqpRefused("amqp:not-allowed", f"nothing is sent to a {role} link")

    def _publish(self, dlv: Delivery, topic: str, payload: bytes) -> None:
        """The PUBLISH an MQTT child would have sent; its release is this delivery's accepted
        disposition (the hub's replies go out first, on their links)."""
        key = next(self._keys)
        self._incoming[key] = dlv
        self._server.handler.on_publish(self, Publish(topic, payload, 1, packet_id=key))

    def hold_puback(self, packet_id: int | None) -> Callable[..., None]:
        """The handler's hold on a request (see ChildConnection.hold_puback): the release
        sends the replies, then settles the delivery as accepted."""
        dlv = self._incoming.pop(packet_id, None) if packet_id is not None else None
        self._hold()
        done = False

        def release(*replies: tuple[str, bytes]) -> None:
            nonlocal done
            if done:
                return
            done = True
            self._unhold()
            if self._phase == "closed":
                return
            for topic, body in replies:
                self.deliver(topic, body)
            if dlv is not None:
                dlv.update(Delivery.ACCEPTED)
                dlv.settle()
                self._credit(dlv.link)
            self._schedule_flush()

        return release

    def hold_work(self) -> Callable[[], None]:
        return self.hold_puback(None)

    def _hold(self) -> None:
        self.outstanding += 1
        if self.outstanding >= self._server.limits.max_outstanding_per_child:
            self._room.clear()

    def _unhold(self) -> None:
        self.outstanding -= 1
        if self.outstanding <= self._server.limits.max_outstanding_per_child // 2:
            self._room.set()

    def slow_down(self, kind: str) -> None:
        wait = self.rates.charge(kind, time.monotonic())
        if wait <= 0:
            return
        self._resume_at = max(self._resume_at, time.monotonic() + wait)
        self._server.log_limited(
            Event.CHILD_THROTTLED,
            f"child {self.device_id}: over {self.rates.rate(kind):g} {kind} per second "
            f"({CONFIG_KEY[kind]}); slowed down, not disconnected; check why it sends so much",
            device_id=self.device_id, cause=kind)

    def _credit(self, link: Link) -> None:
        if link.state & Endpoint.LOCAL_ACTIVE and link.credit < CREDIT // 2:
            link.flow(CREDIT - link.credit)

    def _put_token(self, dlv: Delivery, msg: Message) -> None:
        props = msg.properties or {}
        status, description = 200, "OK"
        if props.get("operation") != "put-token" or props.get("type") not in PUT_TOKEN_TYPES:
            status, description = 400, (f"expected operation put-token of type "
                                        f"{PUT_TOKEN_TYPES[0]}, got {props.get('operation')!r} "
                                        f"{props.get('type')!r}")
        else:
            token = dia.body_bytes(msg).decode("utf-8", "replace")
            if not self._authenticate(dia.parse_audience(str(props.get("name", ""))), token):
                status, description = 401, "put-token refused (see the gateway's journal)"
        dlv.update(Delivery.ACCEPTED)
        dlv.settle()
        self._credit(dlv.link)
        answer = Message(correlation_id=msg.id, properties={
            "status-code": status, "status-description": description})
        self._send(dia.CBS_ANSWERS, answer)

    def _twin_request(self, dlv: Delivery, msg: Message) -> None:
        annotations = msg.annotations or {}
        operation = str(annotations.get("operation", ""))
        resource = str(annotations.get("resource", "") or "")
        rid = format(next(self._keys), "x")
        topic = dia.twin_request_topic(operation, resource, rid)
        if topic is None:  # the switch of desired-property notifications
            self._desired_on = operation == "PUT"
            dlv.update(Delivery.ACCEPTED)
            dlv.settle()
            self._credit(dlv.link)
            self._send(dia.TWIN_ANSWERS, dia.twin_answer("$iothub/twin/res/200/", b"",
                                                         msg.correlation_id))
            return
        if len(self._twin_rids) >= self._server.limits.max_outstanding_per_child:
            raise dia.AmqpRefused("amqp:resource-limit-exceeded", "too many twin requests")
        self._twin_rids[rid] = msg.correlation_id
        payload = dia.body_bytes(msg) if operation == "PATCH" else b""
        self._publish(dlv, topic, payload)

    # -- to the child (what the hub calls) ---------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._phase == "engine" and not self._writer.is_closing()

    @property
    def subscriptions(self) -> set[str]:
        return {role for role in self._roles.values()}

    @property
    def in_flight(self) -> int:
        return sum(len(v) for v in self._pending_out.values())

    def subscribed(self, topic: str) -> bool:
        """Whether the child has the link on which `topic` would reach it."""
        role = self._topic_role(topic)
        if role == dia.TWIN_ANSWERS and topic.startswith("$iothub/twin/PATCH/"):
            return self._desired_on and self._link(role) is not None
        return role is not None and self._link(role) is not None

    def _topic_role(self, topic: str) -> str | None:
        if topic.startswith("$iothub/twin/"):
            return dia.TWIN_ANSWERS
        if topic.startswith("$iothub/methods/POST/"):
            return dia.METHOD_REQUESTS
        if topic.startswith("devices/"):
            return dia.C2D
        return None

    def deliver(self, topic: str, payload: bytes, qos: int = 0,
                on_acked: Callable[[], None] | None = None, dup: bool = False) -> None:
        """What the hub would PUBLISH to an MQTT child, as a message on the matching link.
        A cloud-to-device message's `on_acked` runs when the child accepts or rejects it; a
        released (abandoned) one is sent again."""
        role = self._topic_role(topic)
        if role == dia.TWIN_ANSWERS and topic.startswith("$iothub/twin/res/"):
            rid = dict(_query_pairs(topic)).get("$rid", "")
            msg = dia.twin_answer(topic, payload, self._twin_rids.pop(rid, rid))
        elif role == dia.TWIN_ANSWERS:
            msg = dia.desired_patch(payload)
        elif role == dia.METHOD_REQUESTS:
            msg = dia.method_request(topic, payload)
        elif role == dia.C2D:
            msg = dia.devicebound_message(self.device_id, topic, payload)
        else:
            return  # a topic no AMQP link carries (answers to child-to-child calls)
        settled = None
        if on_acked is not None:
            def settled(outcome: str) -> None:
                if outcome in ("accepted", "rejected"):
                    on_acked()
                else:  # released or modified: abandoned, deliver again
                    self._send(role, msg, settled)
        self._send(role, msg, settled)

    def _send(self, role: str, msg: Message,
              on_settled: Callable[[str], None] | None = None) -> None:
        link = self._link(role)
        if link is None:
            return
        self._pending_out.setdefault(link, []).append((msg, on_settled))
        self._send_waiting(link)
        self._schedule_flush()

    def _send_waiting(self, link: Link) -> None:
        waiting = self._pending_out.get(link)
        while waiting and link.credit > 0:
            msg, on_settled = waiting.pop(0)
            # a str tag: what both proton 0.37 (Debian's, in the .deb) and 0.40 take
            dlv = link.delivery(str(next(self._keys)))
            dlv.context = on_settled  # type: ignore[attr-defined]
            link.send(msg.encode())
            link.advance()
            if on_settled is None:
                dlv.settle()

    def _outgoing_settled(self, dlv: Delivery) -> None:
        state = dlv.remote_state
        if not state or not (dlv.settled or state in _TERMINAL):
            return
        on_settled = getattr(dlv, "context", None)
        dlv.settle()
        if on_settled is not None:
            on_settled(_TERMINAL.get(state, "released"))

    # -- output ------------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def _write(self, data: bytes) -> None:
        if not data or self._writer.is_closing():
            return
        if self._writer.transport.get_write_buffer_size() > 2 * WRITE_BUFFER_MAX:
            self._refuse(f"not reading: over {2 * WRITE_BUFFER_MAX} bytes of output unread")
            self._phase = "closed"
            sockets.abort(self._writer.transport)
            return
        self._writer.write(data)

    def flush(self) -> None:
        """The engine's output of everything done since the last read (answers, settlements)."""
        self._flush_scheduled = False
        if self._engine is not None:
            self._pump()
        if self._phase == "closed" and not self._writer.is_closing():
            self._writer.close()


_TERMINAL = {Delivery.ACCEPTED: "accepted", Delivery.REJECTED: "rejected",
             Delivery.RELEASED: "released", Delivery.MODIFIED: "modified"}


def _query_pairs(topic: str) -> list[tuple[str, str]]:
    return parse_qsl(topic.partition("?")[2], keep_blank_values=True)


# -- SASL frames ---------------------------------------------------------------------------


def _mechanisms(names: tuple[str, ...]) -> Callable[[Data], None]:
    def fill(d: Data) -> None:
        d.put_array(False, Data.SYMBOL)
        d.enter()
        for name in names:
            d.put_symbol(symbol(name))
        d.exit()
    return fill


def _outcome(code: int) -> Callable[[Data], None]:
    def fill(d: Data) -> None:
        d.put_ubyte(code)
    return fill


def _sasl_frame(descriptor: int, fill: Callable[[Data], None]) -> bytes:
    """A SASL frame (type 1) holding one described list."""
    d = Data()
    d.put_described()
    d.enter()
    d.put_ulong(descriptor)
    d.put_list()
    d.enter()
    fill(d)
    d.exit()
    d.exit()
    body = d.encode()
    return struct.pack(">IBBH", 8 + len(body), 2, 1, 0) + body


def _take_frame(buf: bytearray, limit: int) -> bytes | None:
    """One whole SASL frame's body from the front of `buf`, or None until it is all there."""
    if len(buf) < 8:
        return None
    size, doff, kind = struct.unpack(">IBB", buf[:6])
    if size > limit or size < 8 or doff < 2 or doff * 4 > size:
        raise Refusal(f"SASL frame of {size} bytes (data offset {doff}) refused; at most "
                      f"{limit}")
    if kind != 1:
        raise Refusal(f"frame type {kind} during SASL: only SASL frames (type 1) come first")
    if len(buf) < size:
        return None
    body = bytes(buf[doff * 4:size])
    del buf[:size]
    return body


def _described(body: bytes, code: int, name: str) -> list:
    """The fields of a SASL performative, checked to be the one expected."""
    d = Data()
    try:
        d.decode(body)
        d.rewind()
        d.next()
        obj = d.get_object()
    except Exception as exc:
        raise Refusal(f"malformed SASL frame: {exc}") from None
    descriptor = getattr(obj, "descriptor", None)
    if descriptor not in (code, symbol(f"amqp:{name}:list")) or not isinstance(obj.value, list):
        raise Refusal(f"expected {name} during SASL, got {obj!r:.80}")
    # binary fields are views into the decoder's buffer, which goes with it
    return [bytes(v) if isinstance(v, memoryview) else v for v in obj.value]
