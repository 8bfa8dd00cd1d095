"""The child-facing MQTT 3.1.1 listeners: the I/O around each child's session, and the table.

The session rules live in gateway/mqtt/session.py (bytes in, events out): CONNECT first and once,
PUBACK order (MQTT-4.6.0-2), packet ids, keepalive. This module reads and writes the sockets,
hands the session's events to the gateway's Handler, lets a second connection with the same
client id take over, and closes a peer that breaks a rule with one journal line saying why.

Back-pressure stays with the child that causes it: past `limits.max_outstanding_per_child`
requests waiting for a commit or the cloud, or past its rate of twin updates or routed
messages, the connection stops reading its socket (until half the bound is free, or the rate
allows the next request), so the flood waits in that child's own TCP window. Output is written
once per loop turn: a commit releases hundreds of answers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway import sockets
from gateway.child import http_messages
from gateway.child.limits import CONFIG_KEY, ChildRates
from gateway.config import LimitsSettings
from gateway.errors import PeerError
from gateway.log import Event, event
from gateway.mqtt import codec
from gateway.mqtt.codec import CONNACK_UNAVAILABLE, Connect, Publish
from gateway.mqtt.session import (
    NEED_DATA,
    ChildSession,
    Closed,
    ConnectReceived,
    DeliveryAcked,
    PublishReceived,
    Reply,
    SubscribeReceived,
)

if TYPE_CHECKING:
    from gateway.child import amqp, web_head, websocket

READ_CHUNK = 65536
WRITE_BUFFER_MAX = 1 << 20  # a child that does not read is paused, then closed
# Connections still in TLS handshake or waiting for CONNECT, on top of listen.max_connections.
PREAUTH_SLACK = 64
YIELD_EVERY = 16  # requests of one read handled before other connections get a turn
LOG_KEYS_MAX = 4096  # rate-limit memory: peers choose client ids, so the table is bounded
WS_LISTENER = "mqtt-ws"  # the 443 head's name in the status and the journal


class Refusal(PeerError):
    """The peer broke a rule; the connection closes and `reason` goes to the journal."""


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

    async def on_https_request(self, request: http_messages.HttpRequest
                               ) -> http_messages.HttpAnswer:
        """An HTTPS request on the 443 head that is not a WebSocket upgrade."""
        return _web_head().not_found(request)


class ChildConnection:
    """One child: the session's events handed out as its bytes arrive, its output written once
    per loop turn.

    The bytes drive it: `feed()` runs in the transport's callback (the 443 head's: in the task
    that reads the WebSocket) and hands out every event they complete. A task per connection
    paid a future, a wake-up and a coroutine resumed through four frames for every read, and
    with 100 children one message in flight each, every read is one message: a message cost
    25.3 µs of CPU without them, 27.2 with (issue 18). Pacing is not reading: the connection
    pauses its link and goes on later (the next loop turn, the child's rate, room under its
    bound, a child that reads its answers again).
    """

    def __init__(self, server: ChildServer, link: TransportLink | StreamLink,
                 listener: str) -> None:
        self._server = server
        self._link = link
        self.listener = listener
        self.device_id = ""
        self.peer = "?"
        self.connected_at = time.time()
        self._session = ChildSession(
            now=time.monotonic(),
            connect_timeout=server.connect_timeout,
            max_message_bytes=server.max_message_bytes,
        )
        self.close_reason = ""
        self.outstanding = 0  # requests held for a commit or the cloud
        self._roomy = True  # False while outstanding is at the bound, until half is free
        self._waiting_room = False
        self._resume_at = 0.0  # monotonic: over its rate, the child is not read until then
        limits = server.limits
        self.rates = ChildRates(limits.twin_updates_per_sec, limits.routed_messages_per_sec,
                                time.monotonic())
        self._out: list[bytes] = []  # bytes not yet handed to the transport
        self._out_bytes = 0
        self._flush_scheduled = False
        self._paused = False  # its reading paused by us (pacing, or answers it does not read)
        self._later: asyncio.Handle | None = None  # the paced continuation, or the drain timeout
        # the read timeout (see _want_data): the deadline of the read under way (0: none), and
        # the one timer that watches it
        self._read_deadline = 0.0
        self._watch: asyncio.TimerHandle | None = None
        self.finished = False

    # -- input -------------------------------------------------------------------------------

    def start(self) -> None:
        """The link is up: the CONNECT deadline runs from now."""
        self.peer = sockets.peer_name(self._link)
        self._want_data()

    def feed(self, data: bytes) -> None:
        """Bytes from the child; b"" when it closed its side. While paused they wait in the
        session (the link stops reading, so that is at most a read's worth)."""
        if self.finished:
            return
        self._read_deadline = 0.0
        self._session.receive_data(data)
        if not self._paused:
            self._run()

    def _run(self) -> None:
        self._later = None
        if self.finished:
            return
        try:
            if (self._resume_at or not self._roomy) and self._pace(0):
                return
            self._hand_out()
        except PeerError as exc:  # a Refusal from the handler or a delivery
            self.refuse(str(exc))

    def _hand_out(self) -> None:
        """Every event the bytes so far make, until the session needs more or the child must
        wait before its next request."""
        session = self._session
        handled = 0
        while True:
            ev = session.next_event()
            if ev is NEED_DATA:
                self._want_data()
                return
            if isinstance(ev, Closed):
                if ev.reason:
                    self._log_refusal(ev.reason)
                self._end()
                return
            self._dispatch(ev)
            if isinstance(ev, PublishReceived):
                handled += 1
                if ((handled % YIELD_EVERY == 0 or self._resume_at or not self._roomy)
                        and self._pace(handled)):
                    return

    def _pace(self, handled: int) -> bool:
        """Whether the child waits before its next request: for room under the bound, for its
        rate, or, every YIELD_EVERY requests of one read, for the other connections' turn.
        Not reading is all it takes; the kernel's window then holds the child's flood."""
        loop = asyncio.get_running_loop()
        if not self._roomy:
            self._waiting_room = True  # _unhold goes on
            self._pause()
            return True
        if self._resume_at:
            delay = self._resume_at - time.monotonic()
            self._resume_at = 0.0
            if delay > 0 and self._session.is_open:
                self._pause()
                self._later = loop.call_later(delay, self._run)
                return True
        elif handled and handled % YIELD_EVERY == 0:
            self._pause()
            self._later = loop.call_soon(self._run)
            return True
        return False

    def slow_down(self, kind: str) -> None:
        """Charge one request of `kind` to the child's rate; past it, pause its reading."""
        wait = self.rates.charge(kind, time.monotonic())
        if wait <= 0:
            return
        self._resume_at = max(self._resume_at, time.monotonic() + wait)
        self._server.log_limited(
            Event.CHILD_THROTTLED,
            f"child {self.device_id}: over {self.rates.rate(kind):g} {kind} per second "
            f"({CONFIG_KEY[kind]}); slowed down, not disconnected; check why it sends so much",
            device_id=self.device_id,
            cause=kind,
        )

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._link.pause_reading()

    def _want_data(self) -> None:
        """The one place the connection asks for the next chunk: a child that does not read its
        answers is not read either, and is closed if that lasts."""
        if self._unsent_bytes() > WRITE_BUFFER_MAX:
            self.flush()
            if self._link.when_drained(self._drained):
                self._pause()
                self._later = asyncio.get_running_loop().call_later(
                    self._server.connect_timeout * 3, self._not_reading)
                return
        now = time.monotonic()
        self._read_deadline = now + self._session.read_timeout(now)
        watch = self._watch
        if watch is None or watch.when() > self._read_deadline:  # none, or a later one (CONNECT's)
            if watch is not None:
                watch.cancel()
            self._watch = asyncio.get_running_loop().call_at(self._read_deadline, self._check_read)
        if self._paused:
            self._paused = False
            self._link.resume_reading()

    def _drained(self) -> None:
        if self._later is not None:
            self._later.cancel()
        self._run()

    def _not_reading(self) -> None:
        self._later = None
        self.refuse(f"the child has not read {WRITE_BUFFER_MAX >> 10} KiB of answers")

    def _check_read(self) -> None:
        """The read timeout, watched by one timer per connection that follows the deadline
        instead of a timer per read (with one message per read, 100 children one in flight
        each, that was a third of the child side's cost)."""
        self._watch = None
        deadline = self._read_deadline
        if not deadline or self.finished:
            return  # not reading now: the next read sets the timer again
        if time.monotonic() < deadline:
            self._watch = asyncio.get_running_loop().call_at(deadline, self._check_read)
            return
        self.refuse(self._session.expire().reason)

    def _dispatch(self, ev: object) -> None:
        if isinstance(ev, PublishReceived):
            self._server.handler.on_publish(self, ev.publish)
        elif isinstance(ev, Reply):
            self._write(ev.data)
        elif isinstance(ev, DeliveryAcked):
            if ev.token is not None:
                ev.token()
        elif isinstance(ev, SubscribeReceived):
            handler = self._server.handler
            granted = tuple(handler.on_subscribe(self, t, q) for t, q in ev.subscribe.topics)
            self._write(self._session.grant(ev.subscribe, granted))
            handler.on_subscribed(self)
        elif isinstance(ev, ConnectReceived):
            self._connect(ev.connect)
        else:  # PAUSED: a CONNECT left unanswered would spin this loop
            raise codec.LocalProtocolError(f"the connection loop has no handling for {ev!r}")

    # -- lifecycle ---------------------------------------------------------------------------

    def refuse(self, reason: str) -> None:
        """The child broke a rule (or its link did): one journal line, then close."""
        self._session.close()
        self._log_refusal(reason)
        self._end()

    def close(self, reason: str) -> None:
        """Close from elsewhere (takeover, registry change, shutdown)."""
        if not self.close_reason:
            self.close_reason = reason
        self._end()

    def lost(self) -> None:
        """The link is gone (the peer closed or reset it, or we did)."""
        self._end()

    def _end(self) -> None:
        """Once, whoever asks first: the answers so far are written, then the link closes."""
        if self.finished:
            return
        self.finished = True
        for handle in (self._watch, self._later):
            if handle is not None:
                handle.cancel()
        self._watch = self._later = None
        self._session.close()
        self._server._forget(self)
        with contextlib.suppress(Exception):
            self.flush()
        self._link.close()
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

    def _connect(self, connect: Connect) -> None:
        verdict = self._server.admit(self, connect)
        if not verdict.ok:
            self._write(self._session.refuse(verdict.return_code))
            self._server.log_limited(
                Event.CHILD_REFUSED,
                f"child {connect.client_id or '(no client id)'} from {self.peer}: refused "
                f"(CONNACK {verdict.return_code}): {verdict.reason}",
                device_id=connect.client_id,
                cause=verdict.reason.split(":")[0][:32],
            )
            return
        self.device_id = connect.client_id
        self._write(self._session.accept())
        event(
            Event.CHILD_CONNECTED,
            f"child {self.device_id}: connected from {self.peer} ({self.listener})",
            device_id=self.device_id,
        )

    # -- output ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queue bytes, written with the others of this loop turn in one socket write; a child
        whose unread output passes twice WRITE_BUFFER_MAX in one read's worth of answers (the
        loop pauses at WRITE_BUFFER_MAX) is closed at once."""
        if not data or self._link.is_closing():
            return
        if self._unsent_bytes() > 2 * WRITE_BUFFER_MAX:
            self._log_refusal(f"not reading: over {2 * WRITE_BUFFER_MAX} bytes of output unread")
            self.close(self.close_reason)
            self._link.abort()
            return
        self._out.append(data)
        self._out_bytes += len(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._server.flush_soon(self)

    def flush(self) -> None:
        """Hand what _write() queued to the transport: once per loop turn, and before a drain
        or a close."""
        self._flush_scheduled = False
        if not self._out:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self._out_bytes = 0
        if not self._link.is_closing():
            self._link.write(data)

    def _unsent_bytes(self) -> int:
        return self._link.get_write_buffer_size() + self._out_bytes

    def subscribed(self, topic: str) -> bool:
        """Whether any of the child's filters matches `topic` (it asked to receive it)."""
        return self._session.subscribed(topic)

    def peer_cert(self) -> bytes | None:
        return sockets.peer_cert(self._link)

    @property
    def subscriptions(self) -> set[str]:
        return self._session.subscriptions

    @property
    def received(self) -> int:
        return self._session.received

    @property
    def in_flight(self) -> int:
        return self._session.in_flight

    @property
    def is_open(self) -> bool:
        return self._session.is_open and not self._link.is_closing()

    def deliver(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        on_acked: Callable[[], None] | None = None,
        dup: bool = False,
    ) -> None:
        """Send a PUBLISH to the child; with QoS 1, `on_acked` runs when its PUBACK arrives."""
        try:
            self._write(self._session.deliver(topic, payload, qos, dup, on_acked))
        except codec.ProtocolError as exc:
            raise Refusal(exc.reason) from None

    def hold_puback(self, packet_id: int | None) -> Callable[..., None]:
        """Reserve this request's place in the answer order: its PUBACK (`packet_id`, None at
        QoS 0) and its replies leave behind every earlier request's. Call the result once the
        request is safe, with the replies to send first as (topic, payload) pairs."""
        held = self._session.hold_puback(packet_id)
        self._hold()
        done = False

        def release(*replies: tuple[str, bytes]) -> None:
            nonlocal done
            if done:
                return
            done = True
            self._unhold()
            self._write(self._session.release(held, replies))

        return release

    def hold_work(self) -> Callable[[], None]:
        """Count work that waits for a commit but owes no answer (a QoS 0 message)."""
        self._hold()
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self._unhold()

        return release

    def _hold(self) -> None:
        self.outstanding += 1
        if self.outstanding >= self._server.limits.max_outstanding_per_child:
            self._roomy = False

    def _unhold(self) -> None:
        self.outstanding -= 1
        if (not self._roomy
                and self.outstanding <= self._server.limits.max_outstanding_per_child // 2):
            self._roomy = True
            if self._waiting_room and not self.finished:
                self._waiting_room = False
                self._later = asyncio.get_running_loop().call_soon(self._run)


class TransportLink(asyncio.Protocol):
    """A plain or TLS listener's connection: the transport's callbacks drive its
    ChildConnection directly, with no task between them."""

    def __init__(self, server: ChildServer, listener: str) -> None:
        self._server = server
        self.conn = ChildConnection(server, self, listener)
        self.data_received = self.conn.feed  # type: ignore[method-assign]  # a call less a read
        self._transport: asyncio.Transport | None = None
        self._writing_paused = False
        self._on_drained: Callable[[], None] | None = None
        self._abort: asyncio.TimerHandle | None = None

    # -- the transport's callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.write = transport.write  # type: ignore[attr-defined]
        self.is_closing = transport.is_closing
        self.get_write_buffer_size = transport.get_write_buffer_size  # type: ignore[attr-defined]
        if not self._server.accepting(self):
            sockets.abort(transport)
            return
        self._server.track(self.conn)
        self.conn.start()

    def eof_received(self) -> bool:
        self.conn.feed(b"")
        # kept half open for the answers of what the child sent before, until the connection
        # closes it; TLS closes at once whatever this says (and logs a warning if it is True)
        return not self.conn.finished and self.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        self.conn.lost()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        callback, self._on_drained = self._on_drained, None
        if callback is not None:
            callback()

    # -- what the connection asks of it ------------------------------------------------------

    def when_drained(self, callback: Callable[[], None]) -> bool:
        """Whether the transport's buffer is over its mark; then `callback` runs once it is
        under again."""
        if not self._writing_paused:
            return False
        self._on_drained = callback
        return True

    def pause_reading(self) -> None:
        if not self.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.is_closing():
            self._transport.resume_reading()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._transport.get_extra_info(name, default)

    def close(self) -> None:
        """Close once the answers have left (a peer that never reads them is cut)."""
        if self._transport is None or self.is_closing():
            return
        self._transport.close()
        self._abort = sockets.cut_later(self._transport)

    def abort(self) -> None:
        sockets.abort(self._transport)


class StreamLink:
    """A 443 head's MQTT-over-WebSocket connection: a task reads the decoded bytes and feeds
    the ChildConnection, and waits while the connection pauses."""

    def __init__(self, server: ChildServer, reader: websocket.WsReader,
                 writer: websocket.WsWriter) -> None:
        self._server = server
        self._reader = reader
        self._writer = writer
        self._reading = asyncio.Event()
        self._reading.set()
        self.write = writer.write
        self.is_closing = writer.is_closing
        self.get_extra_info = writer.get_extra_info
        self._abort: asyncio.TimerHandle | None = None

    async def pump(self, conn: ChildConnection) -> None:
        """Read until the connection ends; returns once it has."""
        conn.start()
        try:
            while not conn.finished:
                await self._reading.wait()
                if conn.finished:
                    break
                data = await self._reader.read(READ_CHUNK)
                conn.feed(data)
                if not data:
                    break
        except PeerError as exc:  # the WebSocket layer's
            conn.refuse(str(exc))
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass
        finally:
            conn.lost()

    def get_write_buffer_size(self) -> int:
        return self._writer.transport.get_write_buffer_size()

    def when_drained(self, callback: Callable[[], None]) -> bool:
        async def drained() -> None:
            try:
                await self._writer.drain()
            except (ConnectionError, ssl.SSLError):  # gone: the pump's lost() ends it
                return
            callback()

        task = asyncio.get_running_loop().create_task(drained())
        self._server.keep(task)
        return True

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def close(self) -> None:
        self._reading.set()  # the pump sees the end
        if self._abort is not None or self.is_closing():
            return
        self._writer.close()
        self._abort = sockets.cut_later(self._writer.transport)

    def abort(self) -> None:
        sockets.abort(self._writer.transport)


class ChildServer:
    """The listeners and the table of connected children."""

    def __init__(self, listen, handler: Handler, limits: LimitsSettings | None = None) -> None:
        self._cfg = listen
        self.handler = handler
        self.limits = limits or LimitsSettings()
        self.max_message_bytes = listen.max_message_bytes
        self.connect_timeout = listen.connect_timeout_secs
        self.sessions: dict[str, ChildConnection] = {}
        self._all: set[ChildConnection | amqp.AmqpConnection] = set()
        self._servers: list[asyncio.Server] = []
        self.listener_names: list[str] = []  # "tls", "plain", "mqtt-ws", as bound
        self._tasks: set[asyncio.Task] = set()
        self._log_times: dict[str, float] = {}
        self.http_open = 0  # 443 connections in their HTTP request (an upgrade or HTTPS)
        self.https_served = 0  # HTTPS requests answered (a direct method's result)
        self.https_refused = 0
        self.refused = 0
        self.admitted = 0  # CONNECTs accepted since start: a flapping child makes it climb
        self.last_refusal: dict | None = None
        self._unflushed: list[ChildConnection] = []  # connections with output this loop turn
        self._amqp_listener: str | None = None  # amqp.LISTENER once the 5671 head is bound

    async def start(self, tls: ssl.SSLContext | None) -> list[tuple[str, int]]:
        """Bind the listeners; returns the bound (host, port) pairs (port 0 picks a free one)."""
        bound = []
        if self._cfg.port and tls is not None:
            bound.append(await self._listen(self._cfg.port, tls, "tls"))
        if self._cfg.plain_port:
            bound.append(await self._listen(self._cfg.plain_port, None, "plain"))
        if self._cfg.https_port and tls is not None:
            _web_head()  # loaded now: an import error shows at start, not at the first child
            bound.append(await self._listen(self._cfg.https_port, tls, WS_LISTENER))
        if self._cfg.amqp_port and tls is not None:
            self._amqp_listener = _amqp().LISTENER
            bound.append(await self._listen(self._cfg.amqp_port, tls, self._amqp_listener))
        return bound

    def flush_soon(self, conn: ChildConnection) -> None:
        """Write `conn`'s output at the end of this loop turn, with every other connection's:
        one callback per turn for all of them instead of one per connection (a commit or a
        read of the cloud's PUBACKs answers many children at once)."""
        if not self._unflushed:
            asyncio.get_running_loop().call_soon(self._flush_all)
        self._unflushed.append(conn)

    def _flush_all(self) -> None:
        conns, self._unflushed = self._unflushed, []
        for conn in conns:
            conn.flush()

    @property
    def open_connections(self) -> int:
        """Every connection that holds memory: sessions, those before CONNECT, upgrades."""
        return len(self._all) + self.http_open

    def connections_by_listener(self) -> dict[str, int]:
        """Open connections per head (before and after CONNECT), for the status."""
        out = dict.fromkeys(self.listener_names, 0)
        for conn in self._all:
            out[conn.listener] = out.get(conn.listener, 0) + 1
        if self.http_open:
            out[WS_LISTENER] = out.get(WS_LISTENER, 0) + self.http_open
        return out

    def accepting(self, link: TransportLink | asyncio.StreamWriter) -> bool:
        """Whether a new connection may stay: within listen.max_connections and the ones still
        handshaking or before their CONNECT."""
        if self.open_connections < self._cfg.max_connections + PREAUTH_SLACK:
            return True
        self.log_limited(
            Event.CHILD_REFUSED,
            f"peer {sockets.peer_name(link)}: closed: {self.open_connections} "
            "connections open (listen.max_connections and those still handshaking)",
            cause="connections",
        )
        return False

    def track(self, conn: ChildConnection | amqp.AmqpConnection) -> None:
        self._all.add(conn)

    def keep(self, task: asyncio.Task) -> None:
        """Hold a task of a connection's until it ends (the loop keeps only weak references)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self, port: int, tls: ssl.SSLContext | None, name: str) -> tuple[str, int]:
        handshake = self.connect_timeout if tls is not None else None
        if name in (WS_LISTENER, self._amqp_listener):
            server = await asyncio.start_server(
                functools.partial(self._on_stream, name), self._cfg.host, port, ssl=tls,
                limit=READ_CHUNK, backlog=128, ssl_handshake_timeout=handshake)
        else:
            server = await asyncio.get_running_loop().create_server(
                functools.partial(TransportLink, self, name), self._cfg.host, port, ssl=tls,
                backlog=128, ssl_handshake_timeout=handshake)
        self._servers.append(server)
        self.listener_names.append(name)
        return server.sockets[0].getsockname()[:2]

    async def _on_stream(self, name: str, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """A connection of the heads that read through streams: AMQP, and the 443 head's
        HTTP request before its upgrade."""
        if not self.accepting(writer):
            sockets.abort(writer.transport)
            return
        if name == self._amqp_listener:
            head = _amqp().AmqpConnection(self, reader, writer)
            self.track(head)
            await head.serve()
            return
        web = _web_head()
        upgraded = await web.open_request(self, reader, writer)
        if upgraded is None:
            return
        protocol, (ws_reader, ws_writer) = upgraded
        if protocol == web.AMQP_SUBPROTOCOL:
            amqp_head = _amqp()
            head = amqp_head.AmqpConnection(self, ws_reader, ws_writer, amqp_head.WS_LISTENER)
            self.track(head)
            await head.serve()
            return
        link = StreamLink(self, ws_reader, ws_writer)
        conn = ChildConnection(self, link, name)
        self.track(conn)
        await link.pump(conn)

    def admit(self, conn: ChildConnection, connect: Connect) -> Verdict:
        if len(self.sessions) >= self._cfg.max_connections:
            return Verdict(False, CONNACK_UNAVAILABLE, "listen.max_connections reached")
        verdict = self.handler.authenticate(connect, conn.peer_cert())
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
        self.admitted += 1
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


def _amqp():
    """The AMQP head's module, imported once a listener or a connection needs it: Qpid Proton
    costs ~3 MiB of RSS that a gateway without the AMQP head never needs (issue 18)."""
    from gateway.child import amqp

    return amqp


def _web_head() -> web_head:
    """The 443 head's module (with h11 and wsproto), imported once that listener is bound or a
    request needs it: about 2.5 MiB of RSS a gateway without the head never needs (issue 18)."""
    from gateway.child import web_head

    return web_head
