"""The bench harness keeps working: one tiny relay round and one tiny outage, report fields there.

No speed is asserted (speed is a ratio the harness reports, not a unit-test threshold); this
only proves that every system starts, carries the messages and that the report is complete.
"""

from __future__ import annotations

import asyncio
import json

import paho.mqtt.client as mqtt

from bench.__main__ import main
from bench.load import CloudCounter, count_publishes
from bench.scenarios import DRAIN_COUNTER, enrol_counter
from bench.systems import Cloud
from gateway.mqtt.codec import PubAck, Publish, encode


def test_quick_relay_and_outage_report(tmp_path):
    out = tmp_path / "out"
    assert main(["run", "--quick", "--scenarios", "relay", "outage", "startup",
                 "--children", "2", "--outage", "600", "--startup", "500",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    relay = report["relay"]["2"]
    assert set(relay) == {"gatewayd", "paho-floor", "mosquitto", "mosquitto-autosave1"}
    for runs in relay.values():
        assert runs[0]["msgs_per_sec"] > 0
        assert runs[0]["puback_p99_ms"] >= runs[0]["puback_p50_ms"] > 0
    gw = report["outage"]["gatewayd"][0]
    for key in ("ingest_msgs_per_sec", "drain_msgs_per_sec", "time_to_empty_secs",
                "peak_rss_mib", "store_mib", "startup_secs"):
        assert gw[key] > 0, key
    assert report["startup"]["500"][0]["backlog"] == 500
    table = (out / "report.md").read_text()
    assert "| 2 | gatewayd |" in table and "### Outage and drain" in table


def test_quick_relay_through_every_head(tmp_path):
    """The heads of issue 15: the same relay with children on MQTT/TLS and MQTT over WebSocket."""
    out = tmp_path / "out"
    assert main(["run", "--quick", "--scenarios", "relay", "--children", "2", "--systems",
                 "gatewayd-tls", "gatewayd-ws", "--out", str(out)]) == 0
    relay = json.loads((out / "report.json").read_text())["relay"]["2"]
    assert set(relay) == {"gatewayd-tls", "gatewayd-ws"}
    for runs in relay.values():
        assert runs[0]["msgs_per_sec"] > 0 and runs[0]["cpu_us_per_msg"] > 0


def test_the_cloud_counter_counts_publishes_from_their_headers_whatever_the_split():
    def counted(stream: bytes, chunk: int) -> tuple[int, bytes]:
        total, pending = 0, b""
        for i in range(0, len(stream), chunk):
            n, pending = count_publishes(pending + stream[i : i + chunk])
            total += n
        return total, pending

    small = [encode(Publish("devices/x/messages/events/", b"y" * n, qos=0))
             for n in (0, 1, 126, 127, 200)]
    stream = b"".join(small[:2]) + encode(PubAck(5)) + b"".join(small[2:]) + b"\xd0\x00"
    for chunk in (1, 2, 3, 100, len(stream)):
        assert counted(stream, chunk) == (5, b""), chunk
    large = encode(Publish("t", b"z" * 3_000_000, qos=0))  # a four-byte remaining length
    assert counted(stream + large + stream, 65536) == (11, b"")


def test_the_drain_counter_counts_what_its_kept_session_queued_before_it_was_back(tmp_path):
    """A system may drain a small backlog before the counter is back on the restarted cloud
    (the failure this fixes: "cloud delivered 0 of 60"); the cloud keeps it for the counter."""
    cloud = Cloud(tmp_path / "cloud")
    cloud.start()
    try:
        asyncio.run(enrol_counter(CloudCounter(cloud.port, topic=("devices/c000/#",),
                                        client_id=DRAIN_COUNTER)))
        cloud.stop()
        cloud.start()
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        publisher.connect("127.0.0.1", cloud.port)
        publisher.loop_start()
        for _ in range(50):
            publisher.publish("devices/c000/messages/events", b"x", qos=1).wait_for_publish(10)
        publisher.loop_stop()
        publisher.disconnect()

        async def count() -> int:
            counter = CloudCounter(cloud.port, topic=("devices/c000/#",), client_id=DRAIN_COUNTER)
            await counter.connect()
            await counter.wait_for(50, timeout=20)
            counter.close()
            return counter.count

        assert asyncio.run(count()) == 50
    finally:
        cloud.stop()
