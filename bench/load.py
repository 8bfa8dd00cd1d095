"""Load for every system under test: IoT Hub children and a cloud-side counter, on one event loop.

The children are written on the gateway's own sans-I/O codec rather than paho so that 100 of them
cost one thread, not 100: the load generator must not be what limits the run on 2 cores. Each
child keeps at most its share of the window in flight and times every PUBACK.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from proton import Collector, Delivery, Message, Transport
from proton import Connection as AmqpConnection
from proton import Event as AmqpEvent
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, Ping

from gateway.child.auth import make_sas_token
from gateway.mqtt import mqtt5
from gateway.mqtt.codec import (
    ConnAck,
    Connect,
    Decoder,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    encode,
)

HUB = "hub.example.net"
PAYLOAD_BYTES = 200


def payloads(n: int = 512, size: int = PAYLOAD_BYTES, seed: int = 7) -> list[bytes]:
    """Telemetry-like JSON of exactly `size` bytes: readings that vary, as a sensor's would."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        body = {"i": i, "ts": 1700000000000 + i * 100, "temp": round(rnd.uniform(15, 30), 2),
                "hum": round(rnd.uniform(20, 80), 1), "v": [round(rnd.random(), 3)
                                                             for _ in range(6)], "pad": ""}
        raw = json.dumps(body, separators=(",", ":"))
        body["pad"] = "".join(rnd.choice("abcdefghij0123456789") for _ in range(size - len(raw)))
        data = json.dumps(body, separators=(",", ":")).encode()
        out.append(data[:size])
    return out


def child_credentials(device_id: str, key: str | None) -> tuple[str, bytes | None]:
    username = f"{HUB}/{device_id}/?api-version=2021-04-12"
    password = make_sas_token(HUB, device_id, key, int(time.time()) + 3600) if key else None
    return username, password.encode() if password else None


class Child:
    """One device: connects, then publishes `count` QoS 1 messages keeping `window` in flight.
    `head` is how: "plain" MQTT, "tls" or "ws" (MQTT over WebSocket over TLS, one binary
    message per write as the SDKs send it), trusting `ca`."""

    def __init__(self, device_id: str, key: str | None, port: int, window: int,
                 head: str = "plain", ca: Path | None = None) -> None:
        self.device_id, self.key, self.port, self.window = device_id, key, port, window
        self.head, self.ca = head, ca
        self.topic = f"devices/{device_id}/messages/events/"
        self.latencies: list[float] = []
        self._decoder = Decoder()
        self._ws: WsConnection | None = None

    async def connect(self) -> None:
        tls = ssl.create_default_context(cafile=str(self.ca)) if self.head != "plain" else None
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=tls, server_hostname="127.0.0.1" if tls else None)
        if self.head == "ws":
            await self._upgrade()
        username, password = child_credentials(self.device_id, self.key)
        self._write(encode(Connect(self.device_id, username, password, keepalive=120)))
        while True:
            data = await self._read()
            if not data:
                raise RuntimeError(f"{self.device_id}: connection closed before CONNACK")
            for packet in self._decoder.feed(data):
                if isinstance(packet, ConnAck):
                    if packet.return_code != 0:
                        raise RuntimeError(f"{self.device_id}: CONNACK {packet.return_code}")
                    return

    async def run(self, count: int, bodies: list[bytes], rate: float = 0.0) -> None:
        """Publish `count` messages (at `rate` msg/s when given) and wait for every PUBACK."""
        free = asyncio.Semaphore(self.window)
        sent_at: dict[int, float] = {}
        done = asyncio.Event()
        acked = 0

        async def read_acks() -> None:
            nonlocal acked
            while acked < count:
                data = await self._read()
                if not data:
                    raise RuntimeError(f"{self.device_id}: connection closed")
                now = time.perf_counter()
                for packet in self._decoder.feed(data):
                    if isinstance(packet, PubAck):
                        self.latencies.append(now - sent_at.pop(packet.packet_id))
                        acked += 1
                        free.release()
            done.set()

        reader = asyncio.create_task(read_acks())
        start = time.perf_counter()
        for i in range(count):
            await free.acquire()
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            pid = i % 65535 + 1
            sent_at[pid] = time.perf_counter()
            self._write(encode(Publish(self.topic, bodies[i % len(bodies)], 1, packet_id=pid)))
            if i % 64 == 0:
                await self.writer.drain()
        await reader

    async def _upgrade(self) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            f"GET /$iothub/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13"
            f"\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"{self.device_id}: upgrade refused: {head[:80]!r}")
        self._ws = WsConnection(ConnectionType.CLIENT)

    def _write(self, data: bytes) -> None:
        self.writer.write(self._ws.send(BytesMessage(data=data)) if self._ws else data)

    async def _read(self) -> bytes:
        """MQTT bytes (b"" once closed): the frames' payloads on the WebSocket head."""
        while True:
            data = await self.reader.read(65536)
            if self._ws is None or not data:
                return data
            self._ws.receive_data(data)
            out = []
            for ev in self._ws.events():
                if isinstance(ev, BytesMessage):
                    out.append(bytes(ev.data))
                elif isinstance(ev, Ping):
                    self.writer.write(self._ws.send(ev.response()))
            if out:
                return b"".join(out)

    def close(self) -> None:
        self.writer.close()


class AmqpChild:
    """One device on the AMQP head (5671), as `Child` is on the MQTT ones: SASL PLAIN with
    `{device}@sas.{hub}` and a SAS token, a sender link to `/devices/{id}/messages/events`, then
    `count` messages keeping `window` unsettled; an accepted disposition is the PUBACK (its time
    is the latency). Written on Qpid Proton's client-side engine (Connection, Transport,
    Collector: bytes in, events out) driven by this loop, TLS by asyncio as the head does, so
    that 10 children cost one thread here too."""

    def __init__(self, device_id: str, key: str | None, port: int, window: int,
                 ca: Path | None = None) -> None:
        self.device_id, self.key, self.port, self.window, self.ca = (
            device_id, key, port, window, ca)
        self.latencies: list[float] = []
        self._conn = AmqpConnection()
        self._transport = Transport(Transport.CLIENT)
        self._collector = Collector()
        self._link = None

    async def connect(self) -> None:
        tls = ssl.create_default_context(cafile=str(self.ca))
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=tls, server_hostname="127.0.0.1")
        sasl = self._transport.sasl()
        sasl.allowed_mechs("PLAIN")
        sasl.allow_insecure_mechs = True  # TLS is asyncio's, below the engine's sight
        self._conn.user = f"{self.device_id}@sas.{HUB.split('.')[0]}"
        self._conn.password = make_sas_token(HUB, self.device_id, self.key or "",
                                             int(time.time()) + 3600)
        self._conn.hostname = HUB
        self._conn.container = self.device_id
        self._conn.collect(self._collector)
        self._transport.bind(self._conn)
        self._conn.open()
        session = self._conn.session()
        session.open()
        self._link = session.sender("telemetry")
        self._link.target.address = f"/devices/{self.device_id}/messages/events"
        self._link.open()
        while not self._link.credit:
            self._flush()
            if not await self._pump():
                raise RuntimeError(f"{self.device_id}: closed before the link had credit "
                                   f"({self._transport.condition or self._link.remote_condition})")

    async def run(self, count: int, bodies: list[bytes], rate: float = 0.0) -> None:
        """Send `count` messages (at `rate` msg/s when given) and wait for every disposition."""
        sent_at: dict[str, float] = {}  # by delivery tag (proton gives tags back as str)
        sent = 0
        start = time.perf_counter()
        while len(self.latencies) < count:
            while sent < count and len(sent_at) < self.window and self._link.credit > 0:
                if rate and start + sent / rate > time.perf_counter():
                    break
                tag = str(sent)
                self._link.delivery(tag)
                msg = Message(body=bodies[sent % len(bodies)], inferred=True)
                msg.content_type = "application/json"
                self._link.send(msg.encode())
                self._link.advance()
                sent_at[tag] = time.perf_counter()
                sent += 1
            self._flush()
            if rate and sent < count and len(sent_at) < self.window:
                await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
                continue
            if not await self._pump(sent_at):
                raise RuntimeError(f"{self.device_id}: connection closed")

    def _flush(self) -> None:
        pending = self._transport.pending()
        if pending > 0:
            self.writer.write(self._transport.peek(pending))
            self._transport.pop(pending)

    async def _pump(self, sent_at: dict[str, float] | None = None) -> bool:
        """Read once, feed the engine, take each accepted disposition; False once closed."""
        await self.writer.drain()
        data = await self.reader.read(65536)
        if not data:
            return False
        self._transport.push(data)
        now = time.perf_counter()
        while (ev := self._collector.peek()) is not None:
            if ev.type == AmqpEvent.DELIVERY and sent_at is not None:
                dlv = ev.delivery
                if dlv.remote_state == Delivery.ACCEPTED and dlv.tag in sent_at:
                    self.latencies.append(now - sent_at.pop(dlv.tag))
                    dlv.settle()
                elif dlv.remote_state in (Delivery.REJECTED, Delivery.RELEASED):
                    raise RuntimeError(f"{self.device_id}: message {dlv.tag!r} "
                                       f"{dlv.remote_state}")
            elif ev.type == AmqpEvent.TRANSPORT_CLOSED:
                return False
            self._collector.pop()
        self._flush()
        return True

    def close(self) -> None:
        self.writer.close()


class CloudCounter:
    """A QoS 0 subscriber at the cloud that counts telemetry and timestamps every 0.1 s."""

    def __init__(self, port: int, topic: str | tuple[str, ...] = "devices/#",
                 entries: Callable[[bytes], int] | None = None,
                 client_id: str | None = None) -> None:
        """With `client_id`, a session the cloud keeps while the counter is away (the bench's
        cloud queues QoS 0 for it): what a system sends before the counter is back is counted
        when it connects, not lost."""
        self.port, self.topic = port, topic
        self.client_id = client_id
        self.entries = entries  # messages per publish, for systems that batch them
        self.count = 0
        self.first = 0.0  # when the first message arrived
        self.last = 0.0  # and the latest
        self.timeline: list[tuple[float, int]] = []
        self._decoder = Decoder()

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        client_id = self.client_id or f"counter-{id(self)}"
        self.writer.write(encode(Connect(client_id, keepalive=300,
                                         clean_session=self.client_id is None)))
        topics = (self.topic,) if isinstance(self.topic, str) else self.topic
        self.writer.write(encode(Subscribe(1, tuple((t, 0) for t in topics))))
        while True:  # what a kept session had queued may come before the SUBACK
            data = await self.reader.read(65536)
            if not data:
                raise RuntimeError("cloud closed the counter's connection")
            packets = self._decoder.feed(data)
            self._count_packets(packets)
            if any(isinstance(p, SubAck) for p in packets):
                break
        # counting headers alone from here on: an unfinished packet goes along with them
        pending = b"" if self.entries else self._decoder.take_buffered()
        self._task = asyncio.create_task(self._read(pending))

    def _count_packets(self, packets: list) -> None:
        self._counted(sum(self.entries(p.payload) if self.entries else 1
                          for p in packets if isinstance(p, Publish)))

    def _counted(self, counted: int) -> None:
        if counted:
            self.count += counted
            self.last = time.perf_counter()
            self.first = self.first or self.last

    async def _read(self, pending: bytes) -> None:
        last = 0.0
        while True:
            data = await self.reader.read(262144)
            if not data:
                return
            if self.entries:  # it must see each payload
                self._count_packets(self._decoder.feed(data))
            else:
                counted, pending = count_publishes(pending + data)
                self._counted(counted)
            now = time.perf_counter()
            if now - last >= 0.1:
                self.timeline.append((now, self.count))
                last = now

    async def wait_for(self, n: int, timeout: float, stall: float = 10.0) -> float:
        """When the cloud has delivered `n`; fails after `timeout`, or after `stall` seconds
        without a single new message (a lost QoS 0 delivery must not hang the run)."""
        deadline = time.perf_counter() + timeout
        seen, progress = self.count, time.perf_counter()
        while self.count < n:
            now = time.perf_counter()
            if self.count != seen:
                seen, progress = self.count, now
            if now > deadline or now - progress > stall:
                raise TimeoutError(f"cloud delivered {self.count} of {n}")
            await asyncio.sleep(0.005)
        return time.perf_counter()

    def close(self) -> None:
        self._task.cancel()
        self.writer.close()


def count_publishes(data: bytes) -> tuple[int, bytes]:
    """PUBLISH packets in `data` and the bytes of an unfinished packet at its end, from the
    fixed headers alone: the counter shares the machine's cores with the system it measures,
    and decoding every delivery cost it several microseconds a message (a drain's 100,000 a
    second took a third of a core from whichever system was being measured)."""
    count, pos, end = 0, 0, len(data)
    while pos + 2 <= end:
        header = mqtt5.varint(data, pos + 1)
        if header is None:
            break  # the remaining length itself is cut
        length, body_at = header
        if body_at + length > end:
            break
        count += data[pos] >> 4 == 3
        pos = body_at + length
    return count, data[pos:]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
