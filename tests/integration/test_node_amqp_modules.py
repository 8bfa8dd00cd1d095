"""Issue 15, modules over AMQP as the IoT Edge hub's AMQP head serves them: two modules written
with the unmodified Node.js SDK (`ModuleClient.fromEnvironment(Amqp)`: the IOTEDGE_* environment,
the workload API for the trust bundle and SAS signatures), deployed by a deployment document and
run by gatewayd. The producer sends to output out1 on `/devices/{gw}/modules/producer/messages/
events`; a route delivers to the consumer's input in1, which waited in the gateway until the
consumer attached its receiver link (`x-opt-input-name` names the input), and upstream."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from gateway.upstream.cloud_contract import agent_topic, gateway_twin_topic
from tests.integration.test_azure_sdk import free_loopback_address
from tests.integration.test_modules import ROUTES, running
from tests.integration.test_node_sdk import AMQP_PORT, NODE, NODE_MODULES, _skip_reason
from tests.support.clients import CloudVerifier, publish_retained
from tests.support.pki import server_tls
from tests.support.synced import synced_gateway
from tests.support.wait import wait_until

COUNT = 12
SCRIPT = Path(__file__).with_name("node_amqp_module.js")


def deployment(state: Path) -> dict:
    def module(order: int, *args: str) -> dict:
        return {"version": "1.0", "type": "process", "status": "running",
                "restartPolicy": "always", "startupOrder": order,
                "settings": {"command": [str(NODE), str(SCRIPT), *args]},
                "env": {"NODE_PATH": {"value": str(NODE_MODULES)}}}

    return {"version": 1, "modules": {
        "consumer": module(1, "consumer", str(state / "consumer")),
        "producer": module(2, "producer", str(state / "producer"), str(COUNT)),
    }}


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "-")
def test_node_amqp_modules_route_output_to_input_and_upstream(cloud, gateways, tmp_path):
    address = free_loopback_address(AMQP_PORT)
    ca_file, cert_file, key_file = server_tls(tmp_path, (address,), ())
    state = tmp_path / "state"
    publish_retained(cloud.port, gateway_twin_topic("", "edge-1", "desired"), json.dumps(
        {"$version": 1, "schemaVersion": "1.0", "routes": ROUTES}).encode())
    publish_retained(cloud.port, agent_topic("", "edge-1", "desired"),
                     json.dumps(deployment(state)).encode())
    telemetry = CloudVerifier(cloud.port, topic="devices/edge-1/modules/+/messages/events")
    telemetry.connect()
    gw = synced_gateway(
        cloud, gateways, {}, tls=(cert_file, key_file), online=True,
        until=lambda s: s["settings_version"] == 1 and running("consumer", "producer")(s),
        listen={"host": address, "port": 0, "amqp_port": AMQP_PORT},
        gateway={"hostname": address},
        modules={"workload_socket": str(Path(tempfile.mkdtemp(dir="/tmp")) / "workload.sock"),
                 "runner": "process", "restart_backoff_secs": 0.2,
                 "trust_bundle": str(ca_file)},
    )

    def journal(_last: object) -> str:
        return gw.log_text()[-4000:]

    acked = state / "producer" / "acked"
    wait_until(lambda: lines(acked), lambda n: len(n) >= COUNT, timeout=90,
               what="every send of the producer accepted", show=journal)
    assert lines(acked) == [str(i) for i in range(COUNT)]
    telemetry.wait_for(lambda m: {r.i for r in m} >= set(range(COUNT)), timeout=60,
                       what="the producer's output upstream")
    upstream = [r for r in telemetry.messages if r.device == "producer"]
    assert all(r.gw == "edge-1" and r.props.get("$.on") == "out1" for r in upstream)
    assert all(r.props.get("kind") == "temp" for r in upstream)
    assert not any("$.ct" in r.props for r in upstream), "no content type was sent"

    (state / "consumer" / "go").touch()  # its input waited in the gateway until now
    received = state / "consumer" / "received"
    got = wait_until(lambda: lines(received), lambda n: len(n) >= COUNT, timeout=60,
                     what="every message at the consumer's input", show=journal)
    assert got == [f"in1 {i}" for i in range(COUNT)], "in order, once each, on input in1"
    log = gw.log_text()
    assert "child edge-1/producer: connected" in log and "(amqp)" in log
    assert os.path.exists(state / "consumer" / "connected")
