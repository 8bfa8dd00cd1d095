"""The connection to the cloud broker: connect, back off, drain the outbox in order, take acks.

The MQTT 5 client is the gateway's own (mqtt/mqtt5.py for the bytes, mqtt/cloud_session.py for
the socket) on the gateway's event loop: paho cost ~60 µs of CPU per forwarded message, more than
the rest of the gateway's path together, most of it in building a general Properties object per
PUBLISH and in its PUBACK bookkeeping (profile in docs/performance.md). Here a telemetry PUBLISH
is a join of pre-encoded pieces and a fill of the window is one socket write.

A fresh session is made for every connection. What was in flight when a connection died is
re-read from the outbox (which still holds every unacknowledged message) and sent again in order:
duplicates after a link loss are bounded by the window, and the cloud can drop them by `seq`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.log import Event, event
from gateway.mqtt import mqtt5
from gateway.upstream import cloud_contract as contract
from gateway.upstream.cloud_session import CloudSession, SessionCallbacks
from gateway.upstream.dead_letters import DeadLetters
from gateway.upstream.message import PRIORITIES
from gateway.upstream.outbox import Cursor, Outbox
from gateway.upstream.resolver import CloudResolver, ResolveError

SESSION_EXPIRY_SECS = 7 * 24 * 3600
CONNACK_TIMEOUT_SECS = 15.0
SUBSCRIBE_BATCH = 100


@dataclass(frozen=True)
class CloudMessage:
    """A message the cloud sent the gateway, with the MQTT 5 properties the gateway uses."""

    topic: str
    payload: bytes
    response_topic: str = ""
    correlation: bytes = b""
    user_properties: tuple[tuple[str, str], ...] = ()
    expiry_secs: int | None = None

    def user_property(self, name: str, default: str = "") -> str:
        for key, value in self.user_properties:
            if key == name:
                return value
        return default

    @classmethod
    def from_packet(cls, packet: mqtt5.Publish) -> CloudMessage:
        props = packet.props
        return cls(
            packet.topic,
            packet.payload,
            response_topic=str(props.get(mqtt5.P_RESPONSE_TOPIC, "")),
            correlation=bytes(props.get(mqtt5.P_CORRELATION, b"")),
            user_properties=tuple(props.user),
            expiry_secs=props.get(mqtt5.P_MESSAGE_EXPIRY),
        )


@dataclass(frozen=True, slots=True)
class _Sent:
    seq: int
    size: int
    priority: int
    live: bool


class TokenBucket:
    """Publishes per second with a one-second burst; rate 0 means no limit."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = max(rate, 1.0)
        self._at = time.monotonic()

    def _refill(self, now: float) -> None:
        self._tokens = min(max(self.rate, 1.0), self._tokens + (now - self._at) * self.rate)
        self._at = now

    def available(self, now: float) -> int:
        self._refill(now)
        return int(self._tokens)

    def take(self) -> None:
        if self.rate:
            self._tokens -= 1

    def wait_for_one(self, now: float) -> float:
        self._refill(now)
        return max(0.001, (1 - self._tokens) / self.rate)


class UplinkFailure(Exception):
    """A connection attempt failed; the message is the one-line reason for the journal."""


@dataclass
class UplinkStats:
    state: str = "offline"
    since: float = 0.0
    address: str = ""
    last_error: str = ""
    connects: int = 0
    attempts: int = 0
    sent: int = 0
    acked: int = 0
    refused: int = 0
    inflight: int = 0


class Uplink:
    """One cloud connection at a time, forever, until `stop()`."""

    def __init__(
        self,
        cloud,
        gateway_id: str,
        outbox: Outbox,
        on_cloud_message: Callable[[CloudMessage], None],
        subscriptions: list[str],
        clock: Callable[[], float] = time.time,
        resolver: CloudResolver | None = None,
        *,
        dead_letters: DeadLetters,
    ) -> None:
        self._cfg = cloud
        self._dead_letters = dead_letters
        self._resolver = resolver
        self._gateway_id = gateway_id
        self._outbox = outbox
        self._on_cloud_message = on_cloud_message
        self._subscriptions: set[str] = set(subscriptions)
        self._encoder = contract.TelemetryEncoder(cloud.prefix, gateway_id)
        self._direct: dict[int, Callable[[bool], None] | None] = {}  # id -> on PUBACK(ok)
        self.on_online: Callable[[], None] | None = None
        self._clock = clock
        self._session: CloudSession | None = None
        self._window = cloud.inflight_window  # lowered to the broker's Receive Maximum
        self._inflight: dict[int, _Sent] = {}  # packet id -> what it carries
        self._cursor: Cursor = {}  # per priority: the last seq sent
        self._live_cursor: Cursor = {}
        self._live_start: int | None = None  # live-first: seqs from here on are "live"
        self._live_inflight = 0
        self._refusals: dict[int, int] = {}  # seq -> refusals so far
        self._retry: list[tuple[int, int]] = []  # (seq, priority) refused, to send again
        self._last_logged = ""
        self._acked_on_connection = 0
        self._first_on_connection: _Sent | None = None
        self._bucket = TokenBucket(cloud.max_publish_rate)
        self._refill_timer: asyncio.TimerHandle | None = None
        self._fill_scheduled = False
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._connack: asyncio.Future | None = None
        self._stopping = False
        self.stats = UplinkStats(since=clock(), address=f"{cloud.host}:{cloud.port}")
        self._set_state("offline")

    # -- public ------------------------------------------------------------------------------

    def wake(self) -> None:
        """New messages are in the outbox: fill the window once this loop turn's are all in."""
        if self.stats.state == "online" and not self._fill_scheduled:
            self._fill_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_fill)

    def set_subscriptions(self, topics: set[str]) -> None:
        """Follow the registry: subscribe to new children's topics, drop removed ones."""
        added, removed = topics - self._subscriptions, self._subscriptions - topics
        self._subscriptions = set(topics)
        session = self._session
        if session is None or self.stats.state != "online":
            return  # the next connection subscribes to the whole set
        ordered = sorted(removed)
        for start in range(0, len(ordered), SUBSCRIBE_BATCH):
            batch = ordered[start : start + SUBSCRIBE_BATCH]
            session.send(mqtt5.unsubscribe(session.packet_id(), batch))
        self._subscribe(session, added)

    def publish(
        self,
        topic: str,
        payload: bytes,
        retain: bool = False,
        user_properties: list[tuple[str, str]] | None = None,
        correlation: bytes = b"",
        on_done: Callable[[bool], None] | None = None,
    ) -> bool:
        """Publish outside the outbox (twins, method answers); False when offline.

        `on_done(ok)` runs on the broker's PUBACK; if the connection drops first it never runs,
        and the caller's reconcile-on-connect sends the latest state again.
        """
        session = self._session
        if session is None or self.stats.state != "online":
            return False
        props = [mqtt5.user_property(k, v) for k, v in user_properties or ()]
        if correlation:
            props.append(bytes((mqtt5.P_CORRELATION,)) + mqtt5.binary(correlation))
        packet_id = session.packet_id()
        session.send(mqtt5.publish(mqtt5.string(topic), packet_id, mqtt5.properties(*props),
                                   payload, retain=retain))
        self._direct[packet_id] = on_done
        return True

    async def run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await self._run_session()
                attempt = 0
            except UplinkFailure as exc:
                self._failed(str(exc))
                attempt += 1
            if self._stopping:
                break
            await asyncio.sleep(self._backoff(attempt))

    async def stop(self) -> None:
        self._stopping = True
        session = self._session
        if session is not None and self.stats.state == "online":
            self._publish_status(session, "offline")
            session.close()
        elif session is not None:
            session.abort()
        self._lost.set()

    # -- one connection ----------------------------------------------------------------------

    async def _run_session(self) -> None:
        session = await self._connect()
        self._set_state("online")
        self.stats.connects += 1
        event(Event.UPLINK_UP, f"uplink: connected to {self._cfg.url}", address=self.stats.address)
        self._publish_status(session, "online")
        if self._cfg.live_share > 0:
            self._live_start = self._outbox.next_seq
            self._live_cursor = dict.fromkeys(PRIORITIES, self._live_start - 1)
        self._subscribe(session, self._subscriptions)
        if self.on_online is not None:
            self.on_online()
        self._fill()
        await self._lost.wait()
        self._teardown(session)
        if not self._stopping:
            raise UplinkFailure(self._lost_reason or "connection lost")

    @staticmethod
    def _subscribe(session: CloudSession, topics: set[str]) -> None:
        ordered = sorted(topics)
        for start in range(0, len(ordered), SUBSCRIBE_BATCH):
            batch = ordered[start : start + SUBSCRIBE_BATCH]
            session.send(mqtt5.subscribe(session.packet_id(), batch, qos=1))

    async def _connect(self) -> CloudSession:
        loop = asyncio.get_running_loop()
        self._set_state("connecting")
        self.stats.attempts += 1
        self._lost.clear()
        self._lost_reason = ""
        self._connack = loop.create_future()
        session = self._session = self._new_session()
        try:
            await asyncio.wait_for(self._dial(loop, session), CONNACK_TIMEOUT_SECS)
        except ResolveError as exc:
            raise UplinkFailure(str(exc)) from exc
        except TimeoutError:
            raise UplinkFailure(
                f"connection timed out (no TCP/TLS connection within "
                f"{CONNACK_TIMEOUT_SECS:.0f} s)") from None
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UplinkFailure(_describe_connect_error(exc, self._cfg.tls)) from exc
        session.send(self._connect_packet())
        try:
            await asyncio.wait_for(asyncio.shield(self._connack), CONNACK_TIMEOUT_SECS)
        except TimeoutError:
            self._teardown(session)
            raise UplinkFailure(
                f"no CONNACK within {CONNACK_TIMEOUT_SECS:.0f} s; is {self.stats.address} "
                f"an MQTT broker?"
            ) from None
        except UplinkFailure:
            self._teardown(session)
            raise
        return session

    def _new_session(self) -> CloudSession:
        """A session whose callbacks are ignored once it is no longer the current one."""

        def current() -> bool:
            return self._session is session

        def on_lost(why: str) -> None:
            if current():
                self._on_lost(why)

        callbacks = SessionCallbacks(
            on_connack=lambda p: current() and self._on_connack(p),
            on_puback=lambda pid, code: current() and self._on_puback(pid, code),
            on_message=lambda p: self._on_cloud_message(CloudMessage.from_packet(p)),
            on_lost=on_lost,
            on_read_done=lambda: current() and self._on_read_done(),
        )
        session = CloudSession(callbacks, self._cfg.keepalive_secs)
        return session

    async def _dial(self, loop: asyncio.AbstractEventLoop, session: CloudSession) -> None:
        """Resolve (pinned servers, then the last addresses that worked) and connect. TLS checks
        the certificate against the host name whichever address the TCP connection went to."""
        cfg = self._cfg
        tls = _tls_context(cfg) if cfg.tls else None

        async def connect(address: str) -> None:
            await loop.create_connection(
                lambda: session, address, cfg.port, ssl=tls,
                server_hostname=cfg.host if tls else None,
                ssl_handshake_timeout=CONNACK_TIMEOUT_SECS if tls else None,
            )

        if self._resolver is None:
            await connect(cfg.host)
            return
        addresses = await loop.run_in_executor(None, self._resolver.resolve)
        last: Exception | None = None
        for address in addresses:
            try:
                await connect(address)
            except ssl.SSLError:
                raise  # the certificate is wrong for every address alike
            except OSError as exc:
                last = exc
                continue
            self.stats.address = f"{address}:{cfg.port} ({self._resolver.last_source})"
            self._resolver.worked(address, addresses)
            return
        raise last or OSError(f"no address for {cfg.host}")

    def _connect_packet(self) -> bytes:
        cfg = self._cfg
        will = mqtt5.WillMessage(contract.status_topic(cfg.prefix, self._gateway_id),
                                 json.dumps({"state": "offline"}).encode())
        return mqtt5.connect(
            cfg.client_id or self._gateway_id,
            cfg.keepalive_secs,
            clean_start=False,
            session_expiry=SESSION_EXPIRY_SECS,
            username=cfg.username or None,
            password=(cfg.password or None) if cfg.username else None,
            will=will,
        )

    def _teardown(self, session: CloudSession) -> None:
        first, self._first_on_connection = self._first_on_connection, None
        if first is not None and self._acked_on_connection == 0 and not self._stopping:
            # Many brokers (AWS IoT, some mosquitto versions) close the connection instead of
            # refusing a message; one that kills every connection it is the first on is poison.
            self._strike(first, "the broker closed the connection before acknowledging it")
        self._acked_on_connection = 0
        if not self._stopping:
            session.abort()  # on stop, close() is already flushing the DISCONNECT
        self._session = None
        self._inflight.clear()
        self._direct.clear()
        self.stats.inflight = 0
        self._cursor = {}
        self._live_cursor = {}
        self._live_start = None
        self._live_inflight = 0
        self._retry.clear()
        self._outbox.flush_deletes()
        if not self._stopping:
            self._set_state("offline")

    # -- session callbacks (all on the event loop) -------------------------------------------

    def _on_connack(self, packet: mqtt5.ConnAck) -> None:
        fut = self._connack
        if fut is None or fut.done():
            return
        if packet.reason >= 0x80:
            fut.set_exception(UplinkFailure(
                f"the broker refused the connection: {mqtt5.reason_name(packet.reason)}"))
            return
        receive_max = int(packet.props.get(mqtt5.P_RECEIVE_MAXIMUM, 65535))
        self._window = max(1, min(self._cfg.inflight_window, receive_max))
        fut.set_result(None)

    def _on_lost(self, why: str) -> None:
        self._lost_reason = self._lost_reason or why
        if not self._stopping:
            self.stats.last_error = self._lost_reason
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_exception(UplinkFailure(why))
        self._lost.set()

    def _on_read_done(self) -> None:
        self._outbox.flush_deletes()
        self._fill()

    def _on_puback(self, packet_id: int, code: int) -> None:
        if packet_id in self._direct:
            on_done = self._direct.pop(packet_id)
            if on_done is not None:
                on_done(code < 0x80)
            return
        sent = self._inflight.pop(packet_id, None)
        if sent is None:
            return
        if sent.live:
            self._live_inflight -= 1
        if code >= 0x80:
            self._refused(sent, code)
            return
        if self._refusals:
            self._refusals.pop(sent.seq, None)
        self._acked_on_connection += 1
        self.stats.acked += 1
        self._outbox.ack(sent.seq, sent.size, sent.priority)

    def _refused(self, sent: _Sent, code: int) -> None:
        """Retry a refused message a few times, then move it aside: it must not block the queue."""
        self.stats.refused += 1
        if not self._strike(sent, mqtt5.reason_name(code), code):
            self._retry.append((sent.seq, sent.priority))

    def _strike(self, sent: _Sent, why: str, code: int = 0x80) -> bool:
        """Count one refusal of a message; True when it has just gone to the dead letters."""
        count = self._refusals.get(sent.seq, 0) + 1
        self._refusals[sent.seq] = count
        if count < self._cfg.max_refusals:
            return False
        del self._refusals[sent.seq]
        now_ms = int(self._clock() * 1000)
        if self._dead_letters.move(sent.seq, sent.priority, code, now_ms):
            event(
                Event.UPLINK_REFUSED_MESSAGE,
                f"uplink: message seq={sent.seq} refused {count} times ({why}); moved to the "
                f"dead letters (gatewayctl dlq list); check the broker's ACL, quota or "
                f"message size limit for the prefix",
                level=logging.WARNING,
                seq=sent.seq,
            )
        return True

    # -- draining ----------------------------------------------------------------------------

    def _scheduled_fill(self) -> None:
        self._fill_scheduled = False
        self._fill()

    def _fill(self) -> None:
        """Send the next messages, up to the inflight window: refused ones to retry first,
        then, with live-first, a share for messages that arrived since the link came back,
        and the backlog in priority and stored order."""
        session = self._session
        room = self._window - len(self._inflight) - len(self._direct)
        if session is None or self.stats.state != "online" or room <= 0:
            return
        room = self._paced(room)
        now_ms = int(self._clock() * 1000)
        while self._retry and room > 0:
            seq, priority = self._retry.pop(0)
            msg = self._outbox.get(seq, priority)
            if msg is not None and msg.expires_ms > now_ms:
                self._send(session, seq, msg, now_ms, live=False)
                room -= 1
        if self._live_start is not None:
            live_room = round(self._window * self._cfg.live_share)
            take = min(room, max(live_room - self._live_inflight, 0))
            room -= self._send_batch(session, self._live_cursor, take, now_ms, None, live=True)
        backlog = self._send_batch(session, self._cursor, room, now_ms, self._live_start, False)
        if self._live_start is not None and backlog < room:  # the backlog is drained
            self._send_batch(session, self._live_cursor, room - backlog, now_ms, None, live=True)
        self.stats.inflight = len(self._inflight)
        session.flush()

    def _paced(self, room: int) -> int:
        """cloud.max_publish_rate: what the token bucket allows now; a timer fills the rest."""
        if not self._bucket.rate:
            return room
        allowed = min(room, self._bucket.available(time.monotonic()))
        if allowed < room and self._refill_timer is None:
            delay = self._bucket.wait_for_one(time.monotonic())
            self._refill_timer = asyncio.get_running_loop().call_later(delay, self._refilled)
        return allowed

    def _refilled(self) -> None:
        self._refill_timer = None
        self._fill()

    def _send_batch(
        self, session: CloudSession, cursor: Cursor, limit: int, now_ms: int,
        below: int | None, live: bool
    ) -> int:
        if limit <= 0:
            return 0
        batch = self._outbox.read(cursor or 0, limit, now_ms, below=below)
        for seq, msg in batch:
            self._send(session, seq, msg, now_ms, live)
            cursor[msg.priority] = seq
        return len(batch)

    def _send(self, session: CloudSession, seq: int, msg, now_ms: int, live: bool) -> None:
        packet_id = session.packet_id()
        encoder = self._encoder
        session.send(mqtt5.publish(encoder.topic(msg.device_id), packet_id,
                                   encoder.properties(seq, msg, now_ms), msg.payload))
        self._bucket.take()
        sent = self._inflight[packet_id] = _Sent(seq, msg.size(), msg.priority, live)
        if self._first_on_connection is None:
            self._first_on_connection = sent
        self._live_inflight += live
        self.stats.sent += 1

    def _publish_status(self, session: CloudSession, state: str) -> None:
        payload = json.dumps({"state": state, "since": int(self._clock())}).encode()
        topic = mqtt5.string(contract.status_topic(self._cfg.prefix, self._gateway_id))
        packet_id = session.packet_id()
        self._direct[packet_id] = None  # counts against the broker's Receive Maximum
        session.send(mqtt5.publish(topic, packet_id, b"\x00", payload, retain=True))

    # -- state -------------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self.stats.state:
            self.stats.state = state
            self.stats.since = self._clock()

    def _failed(self, reason: str) -> None:
        was, self._last_logged = self._last_logged, reason
        self.stats.last_error = reason
        if reason != was:
            event(
                Event.UPLINK_FAILED,
                f"uplink: {self._cfg.url}: {reason}; messages are kept and sent when it returns",
                level=logging.WARNING,
                address=self.stats.address,
            )

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with jitter, so a fleet does not reconnect in step."""
        low, high = self._cfg.reconnect_min_secs, self._cfg.reconnect_max_secs
        ceiling = min(high, low * (2 ** min(attempt, 20)))
        return random.uniform(max(low, ceiling / 2), ceiling)


def _tls_context(cfg) -> ssl.SSLContext:
    """The broker's certificate and host name are verified; TLS 1.2 is the oldest accepted."""
    ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


def _describe_connect_error(exc: Exception, tls: bool = False) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate check failed: {exc.verify_message}; check cloud.ca_file"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if tls and isinstance(exc, ConnectionResetError | EOFError | ssl.SSLEOFError):
        return ("TLS handshake failed: the broker closed the connection; is that port a TLS "
                "listener (mqtts://) or a plain one (mqtt://)?")
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (broker down or wrong port)"
    if isinstance(exc, TimeoutError):
        return "connection timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"
