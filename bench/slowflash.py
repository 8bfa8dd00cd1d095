"""Scenario 5 (issue 13): one child storms, a bystander sends 100 msg/s, on a card slow to flush.

Every fsync and fdatasync of gatewayd is made `flush_ms` slower by the slow-flash shim
(tests/support/slowsync.c), the store sits alone on a loop device (its writes are counted, as in
the wear runs), and for one phase child A sends 100 QoS 1 msg/s of 200 bytes while child B keeps
64 requests in flight: twin reported patches, or telemetry a route carries into the queue of a
child C that is away (`routed`), or nothing (`none`, the baseline). The phase starts when B's
first window is answered and ends after A's last message and one second of grace.

Figures: A's PUBACKs kept, p50 and p99 (a PUBACK not back in time counts as infinitely late),
what B was served per second, the shim's flushes per second, and store-device bytes written per
payload byte (A's and B's payloads of the phase).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bench.systems import Cloud, GatewaydSystem
from gateway.upstream.cloud_contract import gateway_twin_topic
from tests.support.blockdev import LoopFilesystem
from tests.support.clients import Child, new_key, publish_retained
from tests.support.slowsync import SlowSync
from tests.support.storm import StormProcess, bystander

FLUSH_MS = (0, 5, 20, 50)
STORMS = ("twin", "routed", "none")
LINKS = ("online", "offline")
RATE = 100
PAYLOAD_BYTES = 200
WINDOW = 64
ROUTES = {
    "b-to-c": 'FROM /messages/devices/b/* INTO BrokeredEndpoint("/devices/c/messages/devicebound")',
    "a-up": "FROM /messages/devices/a/* INTO $upstream",
}


def runs(flush_ms: list[int], storms: list[str]) -> list[tuple[int, str, str]]:
    return [(ms, storm, link) for ms in flush_ms for storm in storms for link in LINKS]


def label(storm: str, link: str) -> str:
    return f"{storm}-{link}"


def slow_flash(workdir: Path, flush_ms: int, storm: str, link: str, secs: float) -> dict:
    """One phase; the store on its own loop device when running as root."""
    loopfs = LoopFilesystem(workdir / "loop", size_mib=256) if os.geteuid() == 0 else None
    cloud = Cloud(workdir / "cloud")
    cloud.start()
    try:
        keys = {d: new_key() for d in ("a", "b", "c")}
        if storm == "routed":
            settings = {"$version": 1, "schemaVersion": "1.0", "routes": ROUTES}
            publish_retained(cloud.port, gateway_twin_topic("", "edge-1", "desired"),
                             json.dumps(settings).encode())
        store = loopfs.mountpoint / "store" if loopfs else None
        system = GatewaydSystem(workdir / "gw", cloud, keys, store)
        shim = SlowSync(flush_ms, workdir / "flushes")
        system.gw.env = shim.env()
        system.start()
        try:
            system.gw.wait_status(lambda s: s["uplink"]["state"] == "online"
                                  and s["settings_version"] == (1 if storm == "routed" else 0),
                                  timeout=30, what="online, routes in force")
            if link == "offline":
                cloud.stop()
                system.wait_online(False)
            return _phase(system, keys, shim, loopfs, storm, secs)
        finally:
            system.stop()
    finally:
        cloud.stop()
        if loopfs:
            loopfs.close()


def _phase(system: GatewaydSystem, keys: dict, shim: SlowSync, loopfs, storm: str,
           secs: float) -> dict:
    a = Child("a", keys["a"], system.port)
    a.client.max_inflight_messages_set(RATE)
    assert a.connect() == 0, "the bystander was refused"
    b = None
    if storm != "none":
        kind = "twin" if storm == "twin" else "telemetry"
        b = StormProcess(kind, "b", keys["b"], system.port, WINDOW, size=PAYLOAD_BYTES)
    try:
        if b:
            b.wait_ready()
        written0 = loopfs.bytes_written() if loopfs else 0
        flushes0, t0 = shim.flushes(), time.perf_counter()
        figures = bystander(a, RATE, secs, size=PAYLOAD_BYTES)
        served = b.stop() if b else {"served": 0, "per_sec": 0.0}
        flushes, elapsed = shim.flushes() - flushes0, time.perf_counter() - t0
        written = (loopfs.bytes_written() - written0) if loopfs else None
    finally:
        if b:
            b.close()
        a.close()
    payload = (figures.sent + served["served"]) * PAYLOAD_BYTES
    return {
        "bystander_sent": figures.sent,
        "bystander_acked": figures.acked,
        "bystander_p50_ms": _finite(figures.p50_ms),
        "bystander_p99_ms": _finite(figures.p99_ms),
        "storm_per_sec": served["per_sec"],
        "flushes_per_sec": flushes / elapsed,
        "device_per_payload_byte": written / payload if written is not None else None,
    }


def _finite(ms: float) -> float | None:
    """JSON has no infinity: a percentile past the last PUBACK is recorded as None (never)."""
    return ms if ms != float("inf") else None
