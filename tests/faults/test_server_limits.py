"""The listener's limits that take too long to reach against a daemon at their real values: a
real ChildServer on a real socket, in this process, with the limit lowered for the test."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.child import server
from gateway.config import ListenSettings
from gateway.log import Event
from gateway.mqtt import codec, session
from gateway.mqtt.codec import ConnAck, Connect
from tests.support.broker import free_port


class AcceptAll(server.Handler):
    def authenticate(self, connect, cert_der):
        return server.Verdict(True, 0, "")

    def on_publish(self, conn, publish):
        if publish.qos == 1:
            conn.hold_puback(publish.packet_id)()


def _settings() -> ListenSettings:
    return ListenSettings("127.0.0.1", 0, None, None, None, free_port(), 4096, 10, 5.0)


async def _silent_child(port: int, keepalive: int) -> float:
    """CONNECT with `keepalive`, then say nothing: seconds until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(codec.encode(Connect("quiet", keepalive=keepalive)))
    start = time.monotonic()
    decoder = codec.Decoder()
    assert decoder.feed(await reader.read(4)) == [ConnAck(False, 0)]
    assert await asyncio.wait_for(reader.read(1), 10) == b""
    writer.close()
    return time.monotonic() - start


@pytest.mark.parametrize("keepalive", [0, 65535])
def test_keepalive_is_capped(monkeypatch, keepalive):
    """Keepalive 0 (none) and 65,535 (18 h) both end at 1.5 x the cap of silence."""
    monkeypatch.setattr(session, "MAX_KEEPALIVE_SECS", 0.4)

    async def run() -> float:
        srv = server.ChildServer(_settings(), AcceptAll())
        ((_, port),) = await srv.start(None)
        try:
            return await _silent_child(port, keepalive)
        finally:
            await srv.close()

    assert asyncio.run(run()) < 5


def test_rate_limit_table_is_bounded(monkeypatch, caplog):
    """Refusals under 10,000 made-up client ids: the table of last log times stays bounded."""
    monkeypatch.setattr(server, "LOG_KEYS_MAX", 100)
    srv = server.ChildServer(_settings(), AcceptAll())
    caplog.set_level(logging.WARNING)
    for n in range(10_000):
        srv.log_limited(Event.CHILD_REFUSED, f"refused {n}", device_id=f"made-up-{n}",
                        cause="sas")
    assert len(srv._log_times) <= 101
    lines = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 0 < len(lines) <= 101  # past the bound, one line for the whole flood


class Holding(AcceptAll):
    """Holds every PUBACK until the test releases it; says when `want` requests are in."""

    def __init__(self) -> None:
        self.releases: list = []
        self.want = 0
        self.reached = asyncio.Event()

    def on_publish(self, conn, publish):
        self.releases.append(conn.hold_puback(publish.packet_id))
        if len(self.releases) == self.want:
            self.reached.set()

    async def until(self, count: int) -> None:
        self.want = count
        if len(self.releases) < count:
            self.reached.clear()
            await asyncio.wait_for(self.reached.wait(), 10)


def test_a_child_at_its_bound_is_not_read_until_half_of_it_is_free():
    """limits.max_outstanding_per_child: the connection stops handing out a child's requests at
    the bound, even with more of them already read, and goes on once half of it is free. The
    PUBACKs leave in order, each once its request is released."""
    handler = Holding()

    async def run() -> tuple[list[int], list[int], list[int]]:
        srv = server.ChildServer(_settings(), handler,
                                 server.LimitsSettings(max_outstanding_per_child=4))
        ((_, port),) = await srv.start(None)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        decoder = codec.Decoder()

        async def pubacks(count: int) -> list[int]:
            got: list = []
            while len(got) < count:
                got += decoder.feed(await asyncio.wait_for(reader.read(4096), 10))
            return [p.packet_id for p in got]

        try:
            writer.write(codec.encode(Connect("bounded")))
            assert decoder.feed(await reader.read(4)) == [ConnAck(False, 0)]
            writer.write(b"".join(
                codec.encode(codec.Publish("devices/bounded/messages/events/", b"m", 1,
                                           packet_id=n)) for n in range(1, 11)))
            await handler.until(4)
            at_bound = len(handler.releases)  # all ten were sent in one write
            handler.releases[0]()
            handler.releases[1]()  # 2 outstanding: half of the bound is free
            first = await pubacks(2)
            await handler.until(6)
            after_half = len(handler.releases)
            for release in handler.releases[2:6]:
                release()
            await handler.until(10)
            for release in handler.releases[6:]:
                release()
            rest = await pubacks(8)
            return [at_bound, after_half], first, rest
        finally:
            writer.close()
            await srv.close()

    counts, first, rest = asyncio.run(run())
    assert counts == [4, 6]
    assert first == [1, 2]
    assert rest == list(range(3, 11))
