"""Issue 15, done-when 1 for AMQP: the unmodified Azure IoT Node.js device SDK
(azure-iot-device with azure-iot-device-amqp) connects through the gateway's 5671 head with a
connection string naming it (`GatewayHostName=`) and the gateway's CA, authenticates by SASL
ANONYMOUS and a CBS put-token, and its telemetry reaches the cloud broker with its properties
and gw/seq; each sendEvent returned only after the accepted disposition."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_azure_sdk import free_loopback_address
from tests.support.clients import CloudVerifier, new_key
from tests.support.gatewayd import HUB
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
