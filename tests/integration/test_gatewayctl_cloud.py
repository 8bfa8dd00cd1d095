"""Issue 3: gatewayctl's cloud side, run as the real command against a real mosquitto and a real
daemon: children with one parent, connection strings that authenticate, twins, settings,
methods and cloud-to-device messages."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.gatewayd import HUB
from tests.support.hub_child import HubChild, Operator


def ctl(cloud, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.gatewayctl", *args, "--cloud", cloud.url],
        capture_output=True, text=True, timeout=60)


def ok_json(done: subprocess.CompletedProcess) -> object:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def key_of(conn_str: str) -> str:
    return dict(part.split("=", 1) for part in conn_str.split(";"))["SharedAccessKey"]


def test_children_have_one_parent_and_gateways_are_not_children(cloud):
    out = ok_json(ctl(cloud, "children", "add", "edge-1", "dev-1", "dev-2", "--hub-hostname",
                      HUB, "--gateway-host", "gw.local", "--json"))
    assert [o["deviceId"] for o in out] == ["dev-1", "dev-2"]
    conn = out[0]["connectionString"]
    assert conn.startswith(f"HostName={HUB};DeviceId=dev-1;SharedAccessKey=")
    assert conn.endswith(";GatewayHostName=gw.local")
    ok_json(ctl(cloud, "children", "add", "edge-2", "dev-9", "--hub-hostname", HUB, "--json"))

    second_parent = ctl(cloud, "children", "add", "edge-2", "dev-1", "--hub-hostname", HUB)
    assert second_parent.returncode == 1
    assert "dev-1 already has a parent, edge-1" in second_parent.stderr
    assert len(second_parent.stderr.strip().splitlines()) == 1
    gateway_child = ctl(cloud, "children", "add", "edge-1", "edge-2", "--hub-hostname", HUB)
    assert gateway_child.returncode == 1 and "edge-2 is a gateway" in gateway_child.stderr
    again = ctl(cloud, "children", "add", "edge-1", "dev-2", "--hub-hostname", HUB)
    assert again.returncode == 1 and "already a child of edge-1" in again.stderr

    ok_json(ctl(cloud, "children", "disable", "edge-1", "dev-2", "--json"))
    listed = ok_json(ctl(cloud, "children", "list", "edge-1", "--json"))
    assert listed["version"] == 2
    assert {c["deviceId"]: c["status"] for c in listed["children"]} == {
        "dev-1": "enabled", "dev-2": "disabled"}
    assert all(c["auth"] == "sas" for c in listed["children"]), "keys are never printed"
    ok_json(ctl(cloud, "children", "remove", "edge-1", "dev-2", "--json"))
    table = ctl(cloud, "children", "list", "edge-1")
    assert table.returncode == 0 and "dev-1" in table.stdout and "dev-2" not in table.stdout
    missing = ctl(cloud, "children", "remove", "edge-1", "dev-7")
    assert missing.returncode == 1 and "not children of this gateway: dev-7" in missing.stderr


def test_connection_strings_twins_settings_methods_and_messages_reach_the_daemon(cloud,
                                                                                 gateways):
    out = ok_json(ctl(cloud, "children", "add", "edge-1", "dev-a", "dev-b", "--hub-hostname",
                      HUB, "--json"))
    keys = {o["deviceId"]: key_of(o["connectionString"]) for o in out}
    gw = gateways(cloud_url=cloud.url)
    gw.start()
    gw.wait_status(lambda s: s["registry_version"] == 1 and s["uplink"]["state"] == "online",
                   what="registry from gatewayctl")
    child = HubChild("dev-a", keys["dev-a"], gw.plain_port)
    assert child.connect() == 0, "the printed key authenticates with the daemon"
    child.subscribe_all()

    ok_json(ctl(cloud, "twin", "set", "dev-a", "--desired", '{"rate": 5, "mode": "eco"}',
                "--json"))
    twin = ok_json(ctl(cloud, "twin", "set", "dev-a", "--desired", '{"mode": null}', "--json"))
    assert twin == {"$version": 2, "rate": 5}
    child.wait(lambda: len(child.messages("$iothub/twin/PATCH/properties/desired/")) >= 1,
               what="desired patch")
    assert child.patch_reported({"rate": 5}) == (204, 2)
    operator = Operator(cloud.port)
    operator.subscribe("devices/dev-a/twin/reported")
    operator.wait(lambda: b'"rate": 5' in operator.retained.get("devices/dev-a/twin/reported",
                                                                b""), what="reported in cloud")
    shown = ok_json(ctl(cloud, "twin", "show", "dev-a", "--json"))
    assert shown["desired"]["$version"] == 2 and shown["reported"]["rate"] == 5

    bad = ctl(cloud, "settings", "set", "edge-1", "--ttl", "0")
    assert bad.returncode == 64 and "--ttl" in bad.stderr
    ok_json(ctl(cloud, "settings", "set", "edge-1", "--ttl", "600", "--json"))
    gw.wait_status(lambda s: s["time_to_live_secs"] == 600, what="ttl from gatewayctl")

    answer = ok_json(ctl(cloud, "invoke", "dev-a", "blink", "--payload", '{"n": 2}', "--json"))
    assert answer == {"status": 200, "payload": {"method": "blink", "echo": {"n": 2}}}
    absent = ctl(cloud, "invoke", "dev-b", "blink", "--json")
    assert absent.returncode == 1 and json.loads(absent.stdout)["status"] == 404
    nobody = ctl(cloud, "invoke", "dev-zz", "blink", "--timeout", "0.5", "--json")
    assert nobody.returncode == 1 and json.loads(nobody.stdout)["status"] == 504

    ok_json(ctl(cloud, "send", "dev-a", "--payload", "hello", "--property", "k=v", "--json"))
    child.wait(lambda: child.messages("devices/dev-a/messages/devicebound/"), what="C2D")
    topic, payload = child.messages("devices/dev-a/messages/devicebound/")[0]
    assert payload == b"hello" and "k=v" in topic
    child.close()
    operator.close()


def test_unreachable_broker_and_bad_input_give_one_line(cloud):
    port = cloud.port
    cloud.stop()
    done = subprocess.run([sys.executable, "-m", "gateway.cli.gatewayctl", "children", "list",
                           "edge-1", "--cloud", f"mqtt://127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 69
    assert done.stderr.startswith("gatewayctl: cannot reach the cloud broker at 127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1
    cloud.start()
    bad_json = ctl(cloud, "twin", "set", "dev-a", "--desired", "{nope")
    assert bad_json.returncode == 64 and "--desired: not valid JSON" in bad_json.stderr
    ghost = ctl(cloud, "send", "ghost", "--payload", "hi")
    assert ghost.returncode == 1 and "unknown device ghost: no gateway has it as a child" in (
        ghost.stderr)
    module = ctl(cloud, "twin", "set", "edge-1/nope", "--desired", "{}")
    assert module.returncode == 1 and "unknown module edge-1/nope" in module.stderr
    big = ctl(cloud, "send", "ghost", "--payload", "x" * 70000)
    assert big.returncode == 64 and "over the 65536-byte limit" in big.stderr
    zero = ctl(cloud, "invoke", "dev-a", "m", "--timeout", "0")
    assert zero.returncode == 64 and "--timeout: expected more than 0" in zero.stderr
    no_cloud = subprocess.run([sys.executable, "-m", "gateway.cli.gatewayctl", "twin", "show",
                               "dev-a"], capture_output=True, text=True, timeout=60)
    assert no_cloud.returncode == 64 and "--cloud URL or --config FILE" in no_cloud.stderr


def test_deploy_publishes_a_checked_document_retained(cloud, tmp_path):
    good = tmp_path / "deployment.json"
    good.write_text(json.dumps({"modules": {"filter": {
        "type": "process", "settings": {"command": ["/opt/filter"]}}}}))
    first = ok_json(ctl(cloud, "deploy", "edge-1", str(good), "--json"))
    second = ok_json(ctl(cloud, "deploy", "edge-1", str(good), "--json"))
    assert (first["version"], second["version"]) == (0, 1)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"modules": {"filter": {"type": "docker"}}}))
    refused = ctl(cloud, "deploy", "edge-1", str(bad))
    assert refused.returncode == 65
    assert "modules.filter.type" in refused.stderr and "nothing published" in refused.stderr
    # the retained document is still the second good one
    again = ok_json(ctl(cloud, "deploy", "edge-1", str(good), "--json"))
    assert again["version"] == 2
