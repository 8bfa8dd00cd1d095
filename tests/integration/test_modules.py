"""Issue 14, done-when 1 and 2: two modules written with the unmodified azure-iot-device SDK
(`create_from_edge_environment()`), deployed by a deployment document, run by gatewayd; a route
carries the producer's output to the consumer's input and upstream, through an outage and a
kill -9 of the gateway; module twins and a direct method from gatewayctl."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from gateway.upstream.cloud_contract import agent_topic, gateway_twin_topic
from tests.integration.test_azure_sdk import SDK_PORT, SDK_PYTHON, free_loopback_address
from tests.support.clients import CloudVerifier, publish_retained
from tests.support.pki import server_tls
from tests.support.synced import synced_gateway
from tests.support.wait import wait_until

COUNT = 60
SCRIPT = Path(__file__).with_name("sdk_module.py")
ROUTES = {
    "toConsumer": 'FROM /messages/modules/producer/outputs/out1 INTO '
                  'BrokeredEndpoint("/modules/consumer/inputs/in1")',
    "up": "FROM /messages/modules/producer/* INTO $upstream",
}


def deployment(state: Path) -> dict:
    def module(order: int, *args: str) -> dict:
        return {"version": "1.0", "type": "process", "status": "running",
                "restartPolicy": "always", "startupOrder": order,
                "settings": {"command": [SDK_PYTHON, str(SCRIPT), *args]},
                "env": {"PYTHONUNBUFFERED": {"value": "1"}}}

    return {"version": 1, "modules": {
        "consumer": module(1, "consumer", str(state / "consumer")),
        "producer": module(2, "producer", str(state / "producer"), str(COUNT)),
    }}


def numbers(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def running(*names: str):
    def check(status: dict) -> bool:
        modules = (status.get("modules") or {}).get("modules", {})
        return all(modules.get(n, {}).get("runtimeStatus") == "running" for n in names)
    return check


@pytest.mark.skipif(not SDK_PYTHON, reason="GATEWAYD_SDK_PYTHON unset: run ./dev.sh test")
def test_sdk_modules_route_through_an_outage_and_a_kill(cloud, gateways, tmp_path):
    address = free_loopback_address()
    ca_file, cert_file, key_file = server_tls(tmp_path, (address,), ())
    state = tmp_path / "state"
    publish_retained(cloud.port, gateway_twin_topic("", "edge-1", "desired"), json.dumps(
        {"$version": 1, "schemaVersion": "1.0", "routes": ROUTES}).encode())
    publish_retained(cloud.port, agent_topic("", "edge-1", "desired"),
                     json.dumps(deployment(state)).encode())
    telemetry = CloudVerifier(cloud.port, topic="devices/edge-1/modules/+/messages/events")
    telemetry.connect()
    reported = CloudVerifier(cloud.port, topic="devices/edge-1/modules/consumer/twin/reported")
    reported.connect()
    gw = synced_gateway(
        cloud, gateways, {}, tls=(cert_file, key_file), online=True,
        until=lambda s: s["settings_version"] == 1 and running("consumer", "producer")(s),
        listen={"host": address, "port": SDK_PORT},
        gateway={"hostname": address},
        modules={"workload_socket": str(Path(tempfile.mkdtemp(dir="/tmp")) / "workload.sock"),
                 "runner": "process", "restart_backoff_secs": 0.2,
                 "trust_bundle": str(ca_file)},
    )

    cloud.stop()  # the uplink is cut for the rest of the module traffic
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink cut")
    acked = state / "producer" / "acked"

    def journal(_last: object) -> str:
        return gw.log_text()[-4000:]

    wait_until(lambda: numbers(acked), lambda n: len(n) >= 20, timeout=90,
               what="the producer's first 20 acknowledged sends", show=journal)
    gw.kill()  # SIGKILL, in the middle of the producer's sends
    gw.start()
    gw.wait_status(running("consumer", "producer"), timeout=60, what="modules restarted")
    wait_until(lambda: numbers(acked), lambda n: n and n[-1] == COUNT - 1, timeout=90,
               what="the producer's last send acknowledged", show=journal)

    (state / "consumer" / "go").touch()  # the consumer connects; its input waited for it
    received = state / "consumer" / "received"
    wait_until(lambda: numbers(received), lambda n: len(n) >= COUNT, timeout=90,
               what="every message at the consumer", show=journal)
    got = numbers(received)
    assert got == sorted(set(got)), "in order, once each"
    assert set(numbers(acked)) <= set(got)
    wait_until(lambda: numbers(state / "consumer" / "reported"), lambda n: len(n) >= len(got),
               what="the consumer's reported patches")

    cloud.start()  # the link returns
    telemetry.wait_for(lambda m: {r.i for r in m} >= set(numbers(acked)), timeout=90,
                       what="every acknowledged message upstream")
    upstream = [r for r in telemetry.messages if r.device == "producer"]
    assert all(r.gw == "edge-1" and r.props.get("$.on") == "out1" for r in upstream)
    firsts = list(dict.fromkeys(r.i for r in upstream))
    assert firsts == sorted(firsts), "upstream in order"

    def live_reports(raw) -> list[dict]:
        return [json.loads(m.payload) for m in raw if not m.retain]

    wait_until(lambda: live_reports(reported.raw),
               lambda r: r and r[-1].get("received") == len(got),
               what="the consumer's latest reported state in the cloud")
    assert len(live_reports(reported.raw)) == 1, "reported once, the latest state"

    gw.ctl("twin", "set", "edge-1/consumer", "--desired", '{"threshold": 5}')
    desired = state / "consumer" / "desired"
    wait_until(lambda: desired.read_text() if desired.exists() else "",
               lambda text: '"threshold": 5' in text, what="the desired patch at the module")
    called = gw.ctl("invoke", "edge-1/consumer", "ping", "--payload", '{"x": 1}', "--json")
    body = json.loads(called.stdout)
    assert body["status"] == 200
    assert body["payload"] == {"method": "ping", "echo": {"x": 1}, "received": len(got)}
