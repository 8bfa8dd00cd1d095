"""Issue 15, done-when 1 for AMQP: the unmodified Azure IoT Node.js device SDK
(azure-iot-device with azure-iot-device-amqp) connects through the gateway's 5671 head with a
connection string naming it (`GatewayHostName=`) and the gateway's CA, authenticates by SASL
ANONYMOUS and a CBS put-token, and its telemetry reaches the cloud broker with its properties
and gw/seq; each sendEvent returned only after the accepted disposition."""

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

from tests.integration.test_azure_sdk import free_loopback_address
from tests.support.clients import CloudVerifier, new_key
from tests.support.gatewayd import HUB
from tests.support.hub_child import Operator
from tests.support.pki import server_tls
from tests.support.synced import synced_gateway

NODE_MODULES = Path(os.environ.get("GATEWAYD_NODE_MODULES", "")
                    or Path(__file__).parents[1] / "node" / "node_modules")
NODE = shutil.which("node")
AMQP_PORT = 5671  # the SDK always dials 5671 for AMQP over TCP
SCRIPT = Path(__file__).with_name("node_amqp_child.js")

needs_node = pytest.mark.skipif(
    NODE is None or not (NODE_MODULES / "azure-iot-device-amqp").is_dir(),
    reason="node or the Node SDK (tests/node) missing: run ./dev.sh test")


def run_node(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    return subprocess.run([NODE, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@needs_node
def test_node_sdk_over_amqp_sends_telemetry_through_the_gateway(cloud, gateways, tmp_path):
    address = free_loopback_address(AMQP_PORT)
    ca_file, cert_file, key_file = server_tls(tmp_path, (address,), ())
    device_key = new_key()
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    gw = synced_gateway(cloud, gateways, {"node-dev": device_key}, tls=(cert_file, key_file),
                        listen={"host": address, "port": 0, "amqp_port": AMQP_PORT})

    conn_str = (f"HostName={HUB};DeviceId=node-dev;SharedAccessKey={device_key};"
                f"GatewayHostName={address}")
    done = run_node(conn_str, str(ca_file), "node-dev", "3")
    assert done.returncode == 0, done.stderr[-3000:] + gw.log_text()[-3000:]
    assert done.stdout.split() == ["sent", "0", "sent", "1", "sent", "2"]

    verifier.wait_for(lambda msgs: len(msgs) >= 3, what="the Node SDK's messages")
    got = sorted(verifier.messages, key=lambda m: m.i)
    assert [m.i for m in got] == [0, 1, 2]
    for m in got:
        assert m.device == "node-dev"
        assert m.gw == "edge-1"
        assert m.props["temperature"] == "21.5"
        assert m.props["site name"] == "north/gate"
        assert m.props["$.ct"] == "application/json"
        assert m.props["$.ce"] == "utf-8"
        assert m.props["$.mid"] == f"node-{m.i}"
    seqs = [m.seq for m in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert re.search(r"child node-dev: connected from \S+ \(amqp\)", gw.log_text())
    assert "amqp" in gw.status()["connections"]


class NodeChild:
    """node_amqp_hub_child.js as a subprocess; its stdout events arrive on a queue."""

    def __init__(self, conn_str: str, ca_file: Path) -> None:
        script = Path(__file__).with_name("node_amqp_hub_child.js")
        env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
        self.proc = subprocess.Popen([NODE, str(script), conn_str, str(ca_file)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def next(self, kind: str, timeout: float = 60.0) -> dict:
        while True:
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                err = self.proc.stderr.read()[-3000:] if self.proc.poll() is not None else ""
                raise AssertionError(f"Node child: no {kind} event; stderr: {err}") from None
            if event["event"] == kind:
                return event

    def quit(self) -> int:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        return self.proc.wait(60)


@needs_node
def test_node_sdk_over_amqp_twin_methods_and_c2d(cloud, gateways, tmp_path):
    address = free_loopback_address(AMQP_PORT)
    ca_file, cert_file, key_file = server_tls(tmp_path, (address,), ())
    device_key = new_key()
    operator = Operator(cloud.port)
    operator.put_retained("devices/node-hub/twin/desired", {"$version": 1, "interval": 10})
    gw = synced_gateway(cloud, gateways, {"node-hub": device_key}, online=True,
                        tls=(cert_file, key_file),
                        listen={"host": address, "port": 0, "amqp_port": AMQP_PORT})
    operator.subscribe("devices/node-hub/twin/reported")

    child = NodeChild(f"HostName={HUB};DeviceId=node-hub;SharedAccessKey={device_key};"
                      f"GatewayHostName={address}", ca_file)
    twin = child.next("twin")["twin"]
    assert twin["desired"]["interval"] == 10
    assert twin["reported"]["sdk"] == "node" and twin["reported"]["fw"] == "1.18"
    child.next("ready")
    assert gw.status()["child_listeners"] == {"node-hub": "amqp"}
    operator.wait(lambda: json.loads(operator.retained.get("devices/node-hub/twin/reported",
                                                           b"{}")).get("sdk") == "node",
                  what="the Node SDK's reported patch in the cloud")

    done = subprocess.run([sys.executable, "-m", "gateway.cli.gatewayctl", "invoke", "node-hub",
                           "setLed", "--payload", '{"on": true}', "--json", "--cloud", cloud.url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + gw.log_text()[-3000:]
    assert json.loads(done.stdout) == {"status": 200,
                                       "payload": {"method": "setLed", "echo": {"on": True}}}

    operator.put_retained("devices/node-hub/twin/desired", {"$version": 2, "interval": 30})
    assert child.next("desired")["patch"]["interval"] == 30

    operator.send("node-hub", b"open valve", [("valve", "3")])
    c2d = child.next("c2d")
    assert c2d["data"] == "open valve" and c2d["props"] == {"valve": "3"}
    gw.wait_status(lambda s: s["hub"]["devicebound_waiting"] == 0 if "hub" in s else True,
                   what="the completed C2D message gone from the queue")
    assert child.quit() == 0
    operator.close()
