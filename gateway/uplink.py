"""The connection to the cloud broker: connect, back off, drain the outbox in order, take acks.

paho-mqtt is driven from the gateway's own event loop through its socket callbacks (no paho
threads): paho costs ~90 µs of CPU per QoS 1 publish, and its threaded loop costs 2-5x more.
paho is never handed more than the inflight window, because it rescans its queue on every PUBACK.

A fresh paho client is made for every connection. What was in flight when a connection died is
re-read from the outbox (which still holds every unacknowledged message) and sent again in order:
duplicates after a link loss are bounded by the window, and the cloud can drop them by `seq`.
Only this module imports paho.
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

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import cloud_contract as contract
from gateway.log import Event, event
from gateway.message import PRIORITIES
from gateway.outbox import Cursor, Outbox
from gateway.resolver import CloudResolver, ResolveError

SESSION_EXPIRY_SECS = 7 * 24 * 3600
CONNACK_TIMEOUT_SECS = 15.0


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


@dataclass(frozen=True, slots=True)
class _Sent:
    seq: int
    size: int
    priority: int
    live: bool


class PinnedClient(mqtt.Client):
    """paho, dialling a resolved address while TLS still checks the certificate against the
    host name (paho uses `_host` for SNI and verification, and this address for TCP only)."""

    dial_address: str | None = None

    def _create_socket_connection(self):
        if self.dial_address is None:
            return super()._create_socket_connection()
        return socket.create_connection(
            (self.dial_address, self._port), timeout=self._connect_timeout
        )


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
    ) -> None:
        self._cfg = cloud
        self._resolver = resolver
        self._gateway_id = gateway_id
        self._outbox = outbox
        self._on_cloud_message = on_cloud_message
        self._subscriptions: set[str] = set(subscriptions)
        self._direct: dict[int, Callable[[bool], None] | None] = {}  # mid -> on PUBACK(ok)
        self.on_online: Callable[[], None] | None = None
        self._clock = clock
        self._client: mqtt.Client | None = None
        self._inflight: dict[int, _Sent] = {}  # paho mid -> what it carries
        self._cursor: Cursor = {}  # per priority: the last seq handed to paho
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
        self._lost = asyncio.Event()
        self._connack: asyncio.Future | None = None
        self._stopping = False
        self._misc_task: asyncio.Task | None = None
        self.stats = UplinkStats(since=clock(), address=f"{cloud.host}:{cloud.port}")
        self._set_state("offline")

    # -- public ------------------------------------------------------------------------------

    def wake(self) -> None:
        """New messages are in the outbox: send what the window allows."""
        if self.stats.state == "online":
            self._fill()

    def set_subscriptions(self, topics: set[str]) -> None:
        """Follow the registry: subscribe to new children's topics, drop removed ones."""
        added, removed = topics - self._subscriptions, self._subscriptions - topics
        self._subscriptions = set(topics)
        client = self._client
        if client is None or self.stats.state != "online":
            return  # the next connection subscribes to the whole set
        if removed:
            client.unsubscribe(sorted(removed))
        self._subscribe(client, added)

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
        client = self._client
        if client is None or self.stats.state != "online":
            return False
        props = Properties(PacketTypes.PUBLISH)
        if user_properties:
            props.UserProperty = user_properties
        if correlation:
            props.CorrelationData = correlation
        info = client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._lost.set()
            return False
        self._direct[info.mid] = on_done
        return True

    async def run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await self._session()
                attempt = 0
            except UplinkFailure as exc:
                self._failed(str(exc))
                attempt += 1
            if self._stopping:
                break
            await asyncio.sleep(self._backoff(attempt))

    async def stop(self) -> None:
        self._stopping = True
        client = self._client
        if client is not None and self.stats.state == "online":
            self._publish_status(client, "offline")
            client.disconnect()
            client.loop_write()
        self._lost.set()

    # -- one connection ----------------------------------------------------------------------

    async def _session(self) -> None:
        client = await self._connect()
        self._set_state("online")
        self.stats.connects += 1
        event(Event.UPLINK_UP, f"uplink: connected to {self._cfg.url}", address=self.stats.address)
        self._publish_status(client, "online")
        if self._cfg.live_share > 0:
            self._live_start = self._outbox.next_seq
            self._live_cursor = dict.fromkeys(PRIORITIES, self._live_start - 1)
        self._subscribe(client, self._subscriptions)
        if self.on_online is not None:
            self.on_online()
        self._fill()
        await self._lost.wait()
        self._teardown(client)
        if not self._stopping:
            raise UplinkFailure(self.stats.last_error or "connection lost")

    @staticmethod
    def _subscribe(client: mqtt.Client, topics: set[str]) -> None:
        ordered = sorted(topics)
        for start in range(0, len(ordered), 100):
            client.subscribe([(topic, 1) for topic in ordered[start : start + 100]])

    async def _connect(self) -> mqtt.Client:
        loop = asyncio.get_running_loop()
        self._set_state("connecting")
        self.stats.attempts += 1
        self._lost.clear()
        client = self._new_client()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_SECS
        try:
            await loop.run_in_executor(None, self._dial, client, props)
        except ResolveError as exc:
            raise UplinkFailure(str(exc)) from exc
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UplinkFailure(_describe_connect_error(exc, self._cfg.tls)) from exc
        self._client = client
        self._attach(loop, client)
        self._connack = loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._connack), CONNACK_TIMEOUT_SECS)
        except TimeoutError:
            self._teardown(client)
            raise UplinkFailure(
                f"no CONNACK within {CONNACK_TIMEOUT_SECS:.0f} s; is {self.stats.address} "
                f"an MQTT broker?"
            ) from None
        except UplinkFailure:
            self._teardown(client)
            raise
        return client

    def _dial(self, client: PinnedClient, props: Properties) -> None:
        """Resolve (pinned servers, then the last addresses that worked) and connect; blocking."""

        def connect() -> None:
            client.connect(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_secs,
                           clean_start=False, properties=props)

        if self._resolver is None:
            connect()
            return
        addresses = self._resolver.resolve()
        last: Exception | None = None
        for address in addresses:
            client.dial_address = address
            try:
                connect()
            except ssl.SSLError:
                raise  # the certificate is wrong for every address alike
            except OSError as exc:
                last = exc
                continue
            self.stats.address = f"{address}:{self._cfg.port} ({self._resolver.last_source})"
            self._resolver.worked(address, addresses)
            return
        raise last or OSError(f"no address for {self._cfg.host}")

    def _new_client(self) -> mqtt.Client:
        cfg = self._cfg
        client = PinnedClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or self._gateway_id,
            protocol=mqtt.MQTTv5,
        )
        if cfg.tls:
            client.tls_set_context(_tls_context(cfg))
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password or None)
        client.will_set(
            contract.status_topic(cfg.prefix, self._gateway_id),
            json.dumps({"state": "offline"}),
            qos=1,
            retain=True,
        )
        client.max_inflight_messages_set(cfg.inflight_window)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _attach(self, loop: asyncio.AbstractEventLoop, client: mqtt.Client) -> None:
        sock = client.socket()
        loop.add_reader(sock, self._on_readable, client)
        client.on_socket_register_write = lambda c, u, s: loop.add_writer(
            s, self._on_writable, c
        )
        client.on_socket_unregister_write = lambda c, u, s: loop.remove_writer(s)
        client.on_socket_close = lambda c, u, s: self._detach(loop, s)
        if client.want_write():
            loop.add_writer(sock, self._on_writable, client)
        self._misc_task = loop.create_task(self._keepalive(client))

    def _detach(self, loop: asyncio.AbstractEventLoop, sock) -> None:
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        self._lost.set()

    def _teardown(self, client: mqtt.Client) -> None:
        first, self._first_on_connection = self._first_on_connection, None
        if first is not None and self._acked_on_connection == 0 and not self._stopping:
            # Many brokers (AWS IoT, some mosquitto versions) close the connection instead of
            # refusing a message; one that kills every connection it is the first on is poison.
            self._strike(first, "the broker closed the connection before acknowledging it")
        self._acked_on_connection = 0
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        sock = client.socket()
        if sock is not None and sock.fileno() >= 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock)
            loop.remove_writer(sock)
            sock.close()
        self._client = None
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

    async def _keepalive(self, client: mqtt.Client) -> None:
        while True:
            await asyncio.sleep(1.0)
            if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                self.stats.last_error = (
                    f"the broker stopped answering (no PINGRESP within "
                    f"{self._cfg.keepalive_secs * 1.5:.0f} s): a half-open connection"
                )
                self._lost.set()
                return

    # -- paho callbacks (all on the event loop) ----------------------------------------------

    def _on_readable(self, client: mqtt.Client) -> None:
        try:
            rc = client.loop_read()
            sock = client.socket()
            tls = isinstance(sock, ssl.SSLSocket)
            while rc == mqtt.MQTT_ERR_SUCCESS and tls and sock.pending():
                rc = client.loop_read()
        except Exception as exc:  # a cloud message we could not store: no PUBACK, reconnect
            self.stats.last_error = f"could not handle a message from the cloud: {exc}"
            self._lost.set()
            return
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self.stats.last_error = self.stats.last_error or f"read failed: {mqtt.error_string(rc)}"
            self._lost.set()
            return
        self._outbox.flush_deletes()
        self._fill()

    def _on_writable(self, client: mqtt.Client) -> None:
        if client.loop_write() != mqtt.MQTT_ERR_SUCCESS:
            self._lost.set()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        fut = self._connack
        if fut is None or fut.done():
            return
        if reason_code.is_failure:
            fut.set_exception(
                UplinkFailure(f"the broker refused the connection: {reason_code}")
            )
        else:
            fut.set_result(None)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code is not None and reason_code.is_failure:
            self.stats.last_error = f"disconnected: {reason_code}"
        self._lost.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if mid in self._direct:
            on_done = self._direct.pop(mid)
            if on_done is not None:
                on_done(reason_code is None or not reason_code.is_failure)
            return
        sent = self._inflight.pop(mid, None)
        self.stats.inflight = len(self._inflight)
        if sent is None:
            return
        if sent.live:
            self._live_inflight -= 1
        if reason_code is not None and reason_code.is_failure:
            self._refused(sent, reason_code)
            return
        self._refusals.pop(sent.seq, None)
        self._acked_on_connection += 1
        self.stats.acked += 1
        self._outbox.ack(sent.seq, sent.size, sent.priority)

    def _refused(self, sent: _Sent, reason_code) -> None:
        """Retry a refused message a few times, then move it aside: it must not block the queue."""
        self.stats.refused += 1
        if not self._strike(sent, str(reason_code), reason_code.value):
            self._retry.append((sent.seq, sent.priority))

    def _strike(self, sent: _Sent, why: str, code: int = 0x80) -> bool:
        """Count one refusal of a message; True when it has just gone to the dead letters."""
        count = self._refusals.get(sent.seq, 0) + 1
        self._refusals[sent.seq] = count
        if count < self._cfg.max_refusals:
            return False
        del self._refusals[sent.seq]
        now_ms = int(self._clock() * 1000)
        if self._outbox.dead_letter(sent.seq, sent.priority, code, now_ms):
            event(
                Event.UPLINK_REFUSED_MESSAGE,
                f"uplink: message seq={sent.seq} refused {count} times ({why}); moved to the "
                f"dead letters (gatewayctl dlq list); check the broker's ACL, quota or "
                f"message size limit for the prefix",
                level=logging.WARNING,
                seq=sent.seq,
            )
        return True

    def _on_message(self, client, userdata, message) -> None:
        """Runs before paho PUBACKs a QoS 1 message: what must be durable is stored here."""
        props = getattr(message, "properties", None)
        self._on_cloud_message(
            CloudMessage(
                message.topic,
                message.payload,
                response_topic=getattr(props, "ResponseTopic", "") or "",
                correlation=getattr(props, "CorrelationData", b"") or b"",
                user_properties=tuple(getattr(props, "UserProperty", None) or ()),
                expiry_secs=getattr(props, "MessageExpiryInterval", None),
            )
        )

    # -- draining ----------------------------------------------------------------------------

    def _fill(self) -> None:
        """Hand paho the next messages, up to the inflight window: refused ones to retry first,
        then, with live-first, a share for messages that arrived since the link came back,
        and the backlog in priority and stored order."""
        client = self._client
        room = self._cfg.inflight_window - len(self._inflight)
        if client is None or self.stats.state != "online" or room <= 0:
            return
        room = self._paced(room)
        now_ms = int(self._clock() * 1000)
        while self._retry and room > 0:
            seq, priority = self._retry.pop(0)
            msg = self._outbox.get(seq, priority)
            if msg is not None and msg.expires_ms > now_ms:
                if not self._send(client, seq, msg, now_ms, live=False):
                    return
                room -= 1
        if self._live_start is not None:
            live_room = round(self._cfg.inflight_window * self._cfg.live_share)
            take = min(room, max(live_room - self._live_inflight, 0))
            room -= self._send_batch(client, self._live_cursor, take, now_ms, None, live=True)
        backlog = self._send_batch(client, self._cursor, room, now_ms, self._live_start, False)
        if self._live_start is not None and backlog < room:  # the backlog is drained
            self._send_batch(client, self._live_cursor, room - backlog, now_ms, None, live=True)
        self.stats.inflight = len(self._inflight)

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
        self, client, cursor: Cursor, limit: int, now_ms: int, below: int | None, live: bool
    ) -> int:
        if limit <= 0:
            return 0
        batch = self._outbox.read(cursor or 0, limit, now_ms, below=below)
        for seq, msg in batch:
            if not self._send(client, seq, msg, now_ms, live):
                break
            cursor[msg.priority] = seq
        return len(batch)

    def _send(self, client, seq: int, msg, now_ms: int, live: bool) -> bool:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = contract.telemetry_user_properties(self._gateway_id, seq, msg)
        props.MessageExpiryInterval = contract.expiry_left_secs(msg, now_ms)
        info = client.publish(
            contract.telemetry_topic(self._cfg.prefix, msg.device_id),
            msg.payload,
            qos=1,
            properties=props,
        )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._lost.set()
            return False
        self._bucket.take()
        sent = self._inflight[info.mid] = _Sent(seq, msg.size(), msg.priority, live)
        if self._first_on_connection is None:
            self._first_on_connection = sent
        self._live_inflight += live
        self.stats.sent += 1
        return True

    def _publish_status(self, client: mqtt.Client, state: str) -> None:
        client.publish(
            contract.status_topic(self._cfg.prefix, self._gateway_id),
            json.dumps({"state": state, "since": int(self._clock())}),
            qos=1,
            retain=True,
        )

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
