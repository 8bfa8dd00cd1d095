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
