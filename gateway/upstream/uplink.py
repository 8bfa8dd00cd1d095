"""The connection to the cloud broker: connect, back off, subscribe, write what the drain says.

The MQTT 5 client is the gateway's own (mqtt/mqtt5.py for the bytes, mqtt/cloud_session.py for
the socket) on the gateway's event loop: paho cost ~60 µs of CPU per forwarded message, more than
the rest of the gateway's path together, most of it in building a general Properties object per
PUBLISH and in its PUBACK bookkeeping (profile in docs/performance.md). Here a telemetry PUBLISH
is a join of pre-encoded pieces and a fill of the window is one socket write.

A fresh session is made for every connection. Which stored messages go next, and what their
acks mean, is the drain's (upstream/drain.py, no I/O); the Uplink feeds it the connection's events
and writes its PUBLISHes. What was in flight when a connection died is re-read from the outbox
(which still holds every unacknowledged message) and sent again in order: duplicates after a link
loss are bounded by the window, and the cloud can drop them by `seq`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import UnavailableError
from gateway.log import Event, event
from gateway.mqtt import mqtt5
from gateway.upstream import cloud_contract as contract
from gateway.upstream.cloud_session import CloudSession, SessionCallbacks
from gateway.upstream.dead_letters import DeadLetters
from gateway.upstream.drain import Drain
from gateway.upstream.outbox import Outbox
from gateway.upstream.resolver import CloudResolver, ResolveError

SESSION_EXPIRY_SECS = 7 * 24 * 3600
CONNACK_TIMEOUT_SECS = 15.0
SUBSCRIBE_BATCH = 100
# Messages the broker may have in flight to us (MQTT 5 Receive Maximum): their PUBACKs wait for
# the writer's commit, so this bounds what is held; a commit takes them all at once.
CLOUD_RECEIVE_MAXIMUM = 256


@dataclass(frozen=True)
class CloudMessage:
    """A message the cloud sent the gateway, with the MQTT 5 properties the gateway uses."""

    topic: str
    payload: bytes
    response_topic: str = ""
    correlation: bytes = b""
    user_properties: tuple[tuple[str, str], ...] = ()
    expiry_secs: int | None = None
    # take the broker's PUBACK, to release (call the result) once the message is durable;
    # untaken, the PUBACK goes when the handler returns
    hold_ack: Callable[[], Callable[[], None]] = field(
        default=lambda: lambda: None, repr=False, compare=False)

    def user_property(self, name: str, default: str = "") -> str:
        for key, value in self.user_properties:
            if key == name:
                return value
        return default

    @classmethod
    def from_packet(
        cls, packet: mqtt5.Publish, hold_ack: Callable[[], Callable[[], None]] | None = None
    ) -> CloudMessage:
        props = packet.props
        return cls(
            packet.topic,
            packet.payload,
            response_topic=str(props.get(mqtt5.P_RESPONSE_TOPIC, "")),
            correlation=bytes(props.get(mqtt5.P_CORRELATION, b"")),
            user_properties=tuple(props.user),
            expiry_secs=props.get(mqtt5.P_MESSAGE_EXPIRY),
            **({"hold_ack": hold_ack} if hold_ack is not None else {}),
        )


class UplinkFailure(UnavailableError):
    """A connection attempt failed; the message is the one-line reason for the journal."""


class UplinkLost(UplinkFailure):
    """A connection that was up went away; the message is why, in one line."""


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
        self._on_cloud_message = on_cloud_message
        self._subscriptions: set[str] = set(subscriptions)
        self._direct: dict[int, Callable[[bool], None] | None] = {}  # id -> on PUBACK(ok)
        self.on_online: Callable[[], None] | None = None
        self._clock = clock
        self._session: CloudSession | None = None
        self._receive_max = 65535  # the broker's, from its CONNACK
        self._last_logged = ""
        self._refill_timer: asyncio.TimerHandle | None = None
        self._fill_scheduled = False
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._connack: asyncio.Future | None = None
        self._stopping = False
        self.stats = UplinkStats(since=clock(), address=f"{cloud.host}:{cloud.port}")
        self._drain = Drain(cloud, outbox, dead_letters,
                            contract.TelemetryEncoder(cloud.prefix, gateway_id), self.stats, clock)
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
            except UplinkLost as exc:
                self._lost_connection(str(exc))
                attempt += 1
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
        self._drain.connected(self._receive_max)
        self._subscribe(session, self._subscriptions)
        if self.on_online is not None:
            self.on_online()
        self._fill()
        await self._lost.wait()
        self._teardown(session)
        if not self._stopping:
            raise UplinkLost(self._lost_reason or "connection lost")

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
            on_pubacks=lambda ids: current() and self._on_pubacks(ids),
            on_message=lambda p, hold: self._on_cloud_message(CloudMessage.from_packet(p, hold)),
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
            receive_maximum=CLOUD_RECEIVE_MAXIMUM,
        )

    def _teardown(self, session: CloudSession) -> None:
        if not self._stopping:
            session.abort()  # on stop, close() is already flushing the DISCONNECT
        self._session = None
        self._direct.clear()
        self._drain.lost(self._stopping)
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
        self._receive_max = int(packet.props.get(mqtt5.P_RECEIVE_MAXIMUM, 65535))
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
        self._drain.acks_done()
        self._fill()

    def _on_pubacks(self, packet_ids: list[int]) -> None:
        """One read's plain PUBACKs: the Uplink's own publishes are answered, the rest are
        the drain's (packet ids are unique among everything in flight)."""
        if self._direct:
            for packet_id in packet_ids:
                self._answer_direct(packet_id, True)
        self._drain.acked_all(packet_ids)  # it passes over ids that are not its own

    def _on_puback(self, packet_id: int, code: int) -> None:
        if not self._answer_direct(packet_id, code < 0x80):
            self._drain.acked(packet_id, code)

    def _answer_direct(self, packet_id: int, accepted: bool) -> bool:
        """True when `packet_id` was one of the Uplink's own publishes, now answered."""
        if packet_id not in self._direct:
            return False
        on_done = self._direct.pop(packet_id)
        if on_done is not None:
            on_done(accepted)
        return True

    # -- draining ----------------------------------------------------------------------------

    def _scheduled_fill(self) -> None:
        self._fill_scheduled = False
        self._fill()

    def _fill(self) -> None:
        """Write what the drain sends now, as one socket write; a timer when the publish rate
        holds some back."""
        session = self._session
        if session is None or self.stats.state != "online":
            return
        fill = self._drain.fill(len(self._direct), session.packet_id)
        if fill is None:
            return
        session.send_all(fill.packets)
        if fill.again_in is not None and self._refill_timer is None:
            loop = asyncio.get_running_loop()
            self._refill_timer = loop.call_later(fill.again_in, self._refilled)
        session.flush()

    def _refilled(self) -> None:
        self._refill_timer = None
        self._fill()

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

    def _lost_connection(self, reason: str) -> None:
        """One journal line per lost connection, with why; a failure to reconnect for the same
        reason is not logged again."""
        self._last_logged = reason
        self.stats.last_error = reason
        event(
            Event.UPLINK_LOST,
            f"uplink: the connection to {self._cfg.url} was lost: {reason}; messages are kept "
            f"and sent when it returns",
            level=logging.WARNING,
            address=self.stats.address,
        )

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
        return _uniform(max(low, ceiling / 2), ceiling)


def _uniform(low: float, high: float) -> float:
    """A point of [low, high] from os.urandom: a jitter needs no seeded generator, and the
    random module cost the daemon 0.33 MiB of resident memory for one call per reconnect."""
    return low + (high - low) * int.from_bytes(os.urandom(4), "big") / 0xFFFFFFFF


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
