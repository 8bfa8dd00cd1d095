"""Issue 15, done-when 1 for the Node.js SDK over MQTT over WebSocket, AMQP and AMQP over
WebSocket: the unmodified npm azure-iot-device with azure-iot-device-mqtt's MqttWs or
azure-iot-device-amqp's Amqp and AmqpWs (tests/node/package.json pins them; `./dev.sh test`
installs them into tests/node/node_modules), through a connection string with
`GatewayHostName=` and the gateway's CA, on the port the SDK dials (443, 5671) of a free 127.x
address: telemetry with
properties reaches the cloud with gw/seq; twin get, reported patch and a desired patch; a direct
method from `gatewayctl invoke`; a C2D message; then with the link cut, a kill -9 of gatewayd
and a restart, every message the SDK had acknowledged arrives once the link returns."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.test_azure_sdk import free_loopback_address, sdk_listen
from tests.support.clients import CloudVerifier, new_key
from tests.support.gatewayd import HUB
from tests.support.hub_child import Operator
from tests.support.pki import server_tls
from tests.support.synced import synced_gateway

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")
NODE_MODULES = Path(os.environ.get("GATEWAYD_NODE_MODULES", "")
                    or ROOT / "tests" / "node" / "node_modules")
SCRIPT = Path(__file__).with_name("node_child.js")
OFFLINE = 40  # messages sent with the link cut, across the kill
AMQP_PORT = 5671  # the SDK always dials 5671 for AMQP over TCP
# the transports, by the name of the gateway head that serves each (node_child.js's argument)
TRANSPORTS = ("mqtt-ws", "amqp", "amqp-ws")


def _skip_reason() -> str:
    if NODE is None:
        return "node is not installed (./dev.sh test installs nodejs and npm)"
    if not all((NODE_MODULES / m).is_dir() for m in ("azure-iot-device-mqtt",
                                                     "azure-iot-device-amqp")):
        return "tests/node/node_modules is missing: run ./dev.sh test (npm ci in tests/node)"
    return ""


class NodeChild:
    """node_child.js as a subprocess; its stdout events arrive on a queue."""

    def __init__(self, conn_str: str, ca_file: Path, transport: str = "mqtt-ws") -> None:
        env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
        self.proc = subprocess.Popen([NODE, str(SCRIPT), conn_str, str(ca_file), transport],
                                     env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.events: queue.Queue = queue.Queue()
        self.acked: set[int] = set()
        self._acked = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            event = json.loads(line)
            if event["event"] == "acked":
                with self._acked:
                    self.acked.add(event["i"])
                    self._acked.notify_all()
            else:
                self.events.put(event)

    def next(self, kind: str, timeout: float = 60.0) -> dict:
        while True:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                err = self.proc.stderr.read()[-2000:] if self.proc.poll() is not None else ""
                raise AssertionError(f"node child: no {kind} event; stderr: {err}") from None
            if event["event"] == "fatal":
                raise AssertionError(f"node child failed: {event['error']}")
            if event["event"] == kind:
                return event

    def command(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_acked(self, predicate, timeout: float = 90.0, what: str = "acks") -> set[int]:
        with self._acked:
            if not self._acked.wait_for(lambda: predicate(self.acked), timeout):
                raise AssertionError(f"node child: timed out waiting for {what} "
                                     f"({len(self.acked)} acked)")
            return set(self.acked)

    def quit(self) -> int:
        self.command("quit")
        return self.proc.wait(60)


def _listen(transport: str) -> tuple[str, dict]:
    """A free 127.x address and the [listen] overrides that put the transport's head on the
    port the SDK dials (it cannot be told another)."""
    if transport == "amqp":
        address = free_loopback_address(AMQP_PORT)
        return address, {"host": address, "port": 0, "amqp_port": AMQP_PORT}
    address, listen, _ = sdk_listen("websockets")  # both WebSocket transports dial 443
    return address, listen


@pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "runs")
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_node_sdk_through_an_outage_and_a_kill(cloud, gateways, tmp_path, transport):
    address, listen = _listen(transport)
    ca_file, cert_file, key_file = server_tls(tmp_path, (address,), ())
    key = new_key()
    operator = Operator(cloud.port)
    operator.put_retained("devices/node-dev/twin/desired", {"$version": 1, "interval": 10})
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    gw = synced_gateway(cloud, gateways, {"node-dev": key}, online=True,
                        tls=(cert_file, key_file), listen=listen)
    operator.subscribe("devices/node-dev/twin/reported")

    child = NodeChild(f"HostName={HUB};DeviceId=node-dev;SharedAccessKey={key};"
                      f"GatewayHostName={address}", ca_file, transport)
    try:
        _online_features(child, gw, operator, cloud, transport)
        child.command("send 0 3")
        verifier.wait_for(lambda m: {r.i for r in m} >= {0, 1, 2}, what="the first messages")
        for m in verifier.messages:
            assert (m.device, m.gw) == ("node-dev", "edge-1")
            assert m.props["temperature"] == "21.5" and m.props["site name"] == "north/gate"
            assert m.props["$.ct"] == "application/json" and m.props["$.ce"] == "utf-8"
            assert m.props["$.mid"] == f"node-{m.i}"
        assert len({m.seq for m in verifier.messages}) == len(verifier.messages)

        cloud.stop()  # the link is cut
        gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink cut")
        child.command(f"send 3 {3 + OFFLINE}")
        child.wait_acked(lambda a: len(a) >= 3 + OFFLINE // 3, what="a third acked offline")
        gw.kill()  # SIGKILL in the middle of the sends
        gw.start()
        acked = child.wait_acked(lambda a: len(a) >= 3 + OFFLINE, timeout=180,
                                 what="every message acked after the restart")
        cloud.start()  # the link returns
        verifier.wait_for(lambda m: {r.i for r in m} >= acked, timeout=90,
                          what="every acknowledged message in the cloud")
        assert child.quit() == 0
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
        operator.close()
    firsts = list(dict.fromkeys(r.i for r in verifier.messages))
    assert firsts == sorted(firsts), "in order"


def _online_features(child: NodeChild, gw, operator: Operator, cloud, transport: str) -> None:
    """Twin get, reported and desired patches, a method from gatewayctl, a C2D message."""
    twin = child.next("twin")["twin"]
    assert twin["desired"]["interval"] == 10 and twin["desired"]["$version"] == 1
    child.next("reported")
    child.next("ready")
    status = gw.status()
    assert status["child_listeners"] == {"node-dev": transport}
    assert status["connections"][transport] == 1
    assert re.search(rf"child node-dev: connected from \S+ \({transport}\)", gw.log_text())
    operator.wait(lambda: json.loads(operator.retained.get("devices/node-dev/twin/reported",
                                                           b"{}")).get("sdk") == "node",
                  what="the Node SDK's reported patch in the cloud")

    done = subprocess.run([sys.executable, "-m", "gateway.cli.gatewayctl", "invoke", "node-dev",
                           "setLed", "--payload", '{"on": true}', "--json", "--cloud", cloud.url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"status": 200,
                                       "payload": {"method": "setLed", "echo": {"on": True}}}

    operator.put_retained("devices/node-dev/twin/desired", {"$version": 2, "interval": 30})
    while (patch := child.next("desired")["patch"]).get("$version") != 2:
        pass  # the SDK reports the desired document it had first, then each patch
    assert patch["interval"] == 30

    sent = subprocess.run([sys.executable, "-m", "gateway.cli.gatewayctl", "send", "node-dev",
                           "--payload", "open valve", "--property", "valve=3", "--cloud",
                           cloud.url], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    c2d = child.next("c2d")
    assert c2d["data"] == "open valve" and c2d["props"] == {"valve": "3"}
    gw.wait_status(lambda s: s["hub"]["devicebound_waiting"] == 0 if "hub" in s else True,
                   what="the completed C2D message gone from the queue")
