"""The tests' cloud broker keeps its sessions across a restart: every outage test relies on it."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from tests.support.broker import Mosquitto
from tests.support.clients import CloudVerifier


def test_a_restart_keeps_the_session_and_its_queued_messages(tmp_path):
    broker = Mosquitto(tmp_path / "cloud")
    broker.start()
    verifier = CloudVerifier(broker.port)
    verifier.connect()
    verifier.disconnect()  # offline from here: the broker queues for its session
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    sender.publish("devices/d/messages/events", b'{"device": "d", "i": 7}',
                   qos=1).wait_for_publish(10)
    sender.disconnect()
    sender.loop_stop()

    broker.stop()  # asserts the save itself
    assert broker.db.stat().st_size > 0
    assert "Error saving" not in broker.log.read_text()
    broker.start()
    try:
        verifier.connect()
        verifier.wait_for(lambda got: [(m.device, m.i) for m in got] == [("d", 7)],
                          timeout=10, what="the message queued before the restart")
        verifier.disconnect()
    finally:
        broker.stop()
