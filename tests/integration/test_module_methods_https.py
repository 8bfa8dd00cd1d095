"""Issue 15, done-when 2: a module written with the unmodified azure-iot-device SDK calls direct
methods through the gateway's HTTPS endpoint (`IoTHubModuleClient.invoke_method`, which dials
port 443 of IOTEDGE_GATEWAYHOSTNAME), with the uplink cut: on a child (paho, over MQTT/TLS) and
on another SDK module, and gets their answers; an unknown target is 404 to the SDK; a request
with a wrong token is 401, with its journal line."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import tempfile
from pathlib import Path

import pytest

from gateway.child.auth import make_sas_token
from gateway.upstream.cloud_contract import agent_topic
from tests.integration.test_azure_sdk import SDK_PORT, SDK_PYTHON, SDK_WS_PORT
from tests.integration.test_azure_sdk import free_loopback_address as free_address_for
from tests.support.clients import new_key, publish_retained
from tests.support.gatewayd import HUB
from tests.support.hub_child import HubChild
from tests.support.pki import server_tls
from tests.support.wait import wait_until

SCRIPT = Path(__file__).with_name("sdk_module.py")
TARGETS = ("child-1", "edge-1/callee", "ghost", "edge-1/ghost")


def free_loopback_address() -> str:
    """A 127.x address where both the SDK's ports are free: 8883 (MQTT) and 443 (HTTPS)."""
    for _ in range(20):
        address = free_address_for(SDK_WS_PORT)
        with socket.socket() as s:
            try:
                s.bind((address, SDK_PORT))
            except OSError:
                continue
            return address
    raise RuntimeError("no loopback address with ports 8883 and 443 free")


def deployment(state: Path) -> dict:
    def module(order: int, *args: str) -> dict:
        return {"version": "1.0", "type": "process", "status": "running",
                "restartPolicy": "always", "startupOrder": order,
                "settings": {"command": [SDK_PYTHON, str(SCRIPT), *args]},
                "env": {"PYTHONUNBUFFERED": {"value": "1"}}}

    return {"version": 1, "modules": {
        "callee": module(1, "consumer", str(state / "callee")),
        "invoker": module(2, "invoker", str(state / "invoker"), *TARGETS),
    }}


def results(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    return {r["target"]: r for r in map(json.loads, path.read_text().splitlines())}


def _raw_call(address: str, ca_file: Path, token: str) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    conn = http.client.HTTPSConnection(address, SDK_WS_PORT, context=ctx, timeout=20)
    body = json.dumps({"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 30})
    conn.request("POST", "/twins/child-1/methods?api-version=2019-10-01", body=body, headers={
        "x-ms-edge-moduleId": "edge-1/invoker", "Authorization": token,
        "Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


@pytest.mark.skipif(not SDK_PYTHON, reason="GATEWAYD_SDK_PYTHON unset: run ./dev.sh test")
def test_a_module_calls_a_child_and_a_module_over_https_offline(cloud, gateways, tmp_path):
    from tests.support.synced import synced_gateway

    address = free_loopback_address()
    ca_file, cert_file, key_file = server_tls(tmp_path, (address,), ())
    state = tmp_path / "state"
    (state / "callee").mkdir(parents=True)
    (state / "invoker").mkdir()
    (state / "callee" / "go").touch()  # the callee connects at once and answers methods
    publish_retained(cloud.port, agent_topic("", "edge-1", "desired"),
                     json.dumps(deployment(state)).encode())
    keys = {"child-1": new_key()}

    def running(status: dict) -> bool:
        modules = (status.get("modules") or {}).get("modules", {})
        return all(modules.get(n, {}).get("runtimeStatus") == "running"
                   for n in ("callee", "invoker"))

    gw = synced_gateway(
        cloud, gateways, keys, tls=(cert_file, key_file), online=True, until=running,
        listen={"host": address, "port": SDK_PORT, "https_port": SDK_WS_PORT},
        gateway={"hostname": address},
        modules={"workload_socket": str(Path(tempfile.mkdtemp(dir="/tmp")) / "workload.sock"),
                 "runner": "process", "restart_backoff_secs": 0.2,
                 "trust_bundle": str(ca_file)},
    )
    child = HubChild("child-1", keys["child-1"], SDK_PORT, tls_ca=str(ca_file), host=address)
    assert child.connect() == 0
    child.subscribe_all(devicebound=False)
    wait_until(lambda: (state / "callee" / "connected").exists(), lambda up: up, timeout=60,
               what="the callee module connected", show=lambda _: gw.log_text()[-3000:])

    cloud.stop()  # everything below is local
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink cut")
    (state / "invoker" / "go").touch()
    out = state / "invoker" / "results"
    wait_until(lambda: results(out), lambda r: len(r) == len(TARGETS), timeout=90,
               what="every call's answer at the invoker", show=lambda r: (r, gw.log_text()[-3000:]))
    got = results(out)
    child.close()

    assert got["child-1"]["answer"] == {
        "status": 200, "payload": {"method": "reboot", "echo": {"target": "child-1"}}}
    assert got["edge-1/callee"]["answer"] == {"status": 200, "payload": {
        "method": "reboot", "echo": {"target": "edge-1/callee"}, "received": 0}}
    for target in ("ghost", "edge-1/ghost"):
        assert "404" in got[target]["error"], got[target]
    assert [m for m in child.messages("$iothub/methods/POST/reboot/")], "the child got the call"

    # a token that is not the caller's: signed with a key of our own making
    status, answer = _raw_call(address, ca_file,
                               make_sas_token(HUB, "edge-1/invoker", new_key(), 2**31))
    assert status == 401 and "signature does not match" in answer["message"]
    status, answer = _raw_call(address, ca_file, "")
    assert status == 401 and "no Authorization header" in answer["message"]
    wait_until(gw.log_text, lambda log: "HTTPS request refused (401)" in log
               and "HTTPS request refused (404)" in log, timeout=10,
               what="the refusals' journal lines", show=lambda t: t[-2000:])
    status = gw.wait_status(lambda s: True)
    assert status["uplink"]["state"] != "online", "it all happened offline"
    assert status["https_methods"] == {"served": 2, "refused": 4}
