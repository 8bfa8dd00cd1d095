"""Done-when 3: every refusal case is refused with the right CONNACK code, every rule breach
closes only the offending connection, and an authorised child keeps working meanwhile."""

from __future__ import annotations

import json
import time

import pytest

from gateway.child import certs
from gateway.child.auth import make_sas_token
from gateway.upstream.cloud_contract import registry_topic
from tests.support.clients import Child, CloudVerifier, new_key, publish_retained, registry_doc
from tests.support.gatewayd import HUB
from tests.support.synced import synced_gateway


@pytest.fixture
def pki(tmp_path):
    """A CA for the gateway's listener and for child certificates, plus two child certs."""
    ca_key, ca_cert = certs.make_ca("test CA")
    srv_key, srv_cert = certs.make_server_cert(ca_key, ca_cert, ["localhost"], ["127.0.0.1"])
    files = {"ca": tmp_path / "ca.pem", "srv": tmp_path / "srv.pem", "srvkey": tmp_path / "srv.key"}
    certs.write_pem(files["ca"], cert=ca_cert)
    certs.write_pem(files["srv"], cert=srv_cert)
    certs.write_pem(files["srvkey"], key=srv_key)
    for name in ("x509-good", "x509-stranger"):
        key, cert = certs.make_client_cert(ca_key, ca_cert, name, 30)
        certs.write_pem(tmp_path / f"{name}.pem", cert=cert)
        certs.write_pem(tmp_path / f"{name}.key", key=key)
        files[name] = cert
    files["dir"] = tmp_path
    return files


def cert_paths(pki, name):
    return (str(pki["dir"] / f"{name}.pem"), str(pki["dir"] / f"{name}.key"))


def test_refusals_while_an_authorised_child_keeps_working(cloud, gateways, pki):
    from cryptography.hazmat.primitives.serialization import Encoding

    good_key, disabled_key, other_key = new_key(), new_key(), new_key()
    thumb = certs.thumbprint(pki["x509-good"].public_bytes(Encoding.DER), "sha256")
    x509_entry = {"deviceId": "x509-good", "status": "enabled",
                  "auth": {"type": "x509", "primaryThumbprint": thumb}}
    stranger_entry = {"deviceId": "x509-stranger", "status": "enabled",
                      "auth": {"type": "x509", "primaryThumbprint": "ab" * 32}}
    disabled_entry = {"deviceId": "off", "status": "disabled",
                      "auth": {"type": "sas", "primaryKey": disabled_key}}
    doc = registry_doc(1, {"good": good_key, "victim": new_key()},
                       x=x509_entry, y=stranger_entry, z=disabled_entry)
    # a device that belongs to another gateway of the same hub
    publish_retained(cloud.port, registry_topic("", "edge-2"),
                     registry_doc(1, {"elsewhere": other_key}))
    verifier = CloudVerifier(cloud.port)
    verifier.connect()

    gw = synced_gateway(cloud, gateways, registry=doc, online=True,
                        tls=(pki["srv"], pki["srvkey"]), listen={"client_ca_file": str(pki["ca"])})

    good = Child("good", good_key, gw.tls_port, tls_ca=str(pki["ca"]))
    assert good.connect() == 0
    sent = [good.send(0).mid]

    def refused(code, device, key=None, **kw):
        child = Child(device, key, gw.tls_port, tls_ca=str(pki["ca"]), **kw)
        assert child.connect() == code, device
        child.client.loop_stop()
        sent.append(good.send(len(sent)).mid)  # the good child goes on between every case

    now = int(time.time())
    refused(5, "nobody", new_key())                                  # unknown device
    refused(5, "off", disabled_key)                                  # disabled
    refused(5, "elsewhere", other_key)                               # another gateway's child
    refused(4, "good", new_key())                                    # bad signature
    refused(4, "good", password=make_sas_token(HUB, "good", good_key, now - 10))  # expired
    refused(5, "good", good_key, client_id="not-good")               # client id != device id
    refused(5, "x509-stranger", None, cert=cert_paths(pki, "x509-stranger"))  # thumbprint unknown
    refused(4, "x509-good", None)                                    # x509 device, no cert
    x509 = Child("x509-good", None, gw.tls_port, tls_ca=str(pki["ca"]),
                 cert=cert_paths(pki, "x509-good"))
    assert x509.connect() == 0
    x509.wait_acked([x509.send(0).mid])

    good.wait_acked(sent)
    verifier.wait_for(lambda msgs: {m.i for m in msgs if m.device == "good"} >= set(range(9)),
                      what="the good child's messages")
    status = gw.status()
    assert status["children_refused"] == 8
    assert set(status["children"]) == {"good", "x509-good"}
    log = gw.log_text()
    for reason in ("unknown device", "disabled", "expired", "does not match"):
        assert reason in log, reason
    good.close()
    x509.close()


def closed_after(gw, device, key, action) -> str:
    """Connect `device`, do `action(child)`, and return the journal line about its closing."""
    child = Child(device, key, gw.plain_port)
    child.client.reconnect_delay_set(30, 60)  # do not come back during the test
    assert child.connect() == 0
    action(child)
    gw.wait_status(lambda s: device not in s["children"], what=f"{device} closed")
    child.client.loop_stop()
    return gw.log_text()


def test_rule_breaches_close_only_the_offender(cloud, gateways):
    keys = {"good": new_key(), "bad": new_key()}
    gw = synced_gateway(cloud, gateways, keys, listen={"max_message_bytes": 1024})
    good = Child("good", keys["good"], gw.plain_port)
    assert good.connect() == 0

    cases = [
        (lambda c: c.client.publish("devices/good/messages/events/", b"x", qos=1),
         "may only publish under devices/bad/"),
        (lambda c: c.client.publish("some/other/topic", b"x", qos=1), "not part of the IoT Hub"),
        (lambda c: c.client.subscribe("devices/good/messages/devicebound/#", qos=1),
         "may not subscribe"),
        (lambda c: c.client.publish("devices/bad/messages/events/", b"x", qos=2), "QoS 2"),
        (lambda c: c.client.publish("devices/bad/messages/events/", b"x" * 2000, qos=1),
         "over the limit of 1024"),
    ]
    for n, (action, reason) in enumerate(cases):
        log = closed_after(gw, "bad", keys["bad"], action)
        assert reason in log, reason
        good.wait_acked([good.send(n).mid])  # unaffected
    assert "good" in gw.status()["children"]

    # a second connection with the same id takes over; the first is closed
    good.client.reconnect_delay_set(30, 60)
    first = Child("good", keys["good"], gw.plain_port)
    first.client.reconnect_delay_set(30, 60)
    assert first.connect() == 0
    gw.wait_status(lambda s: "good" in s["children"], what="takeover")
    assert "taken over" in gw.log_text()

    # disabling a connected child in the registry disconnects it at once
    doc = json.loads(registry_doc(2, keys))
    doc["children"][0]["status"] = "disabled"
    publish_retained(cloud.port, registry_topic("", "edge-1"), json.dumps(doc).encode())
    gw.wait_status(lambda s: s["registry_version"] == 2 and "good" not in s["children"],
                   what="disabled child disconnected")
    assert "revoked: good" in gw.log_text()
    # and a refused registry document keeps the one in force
    publish_retained(cloud.port, registry_topic("", "edge-1"), b'{"version": 3, "children": 7}')
    gw.wait_status(lambda s: s["registry_last_refusal"] != "", what="bad registry refused")
    assert gw.status()["registry_version"] == 2
    first.client.loop_stop()
    good.client.loop_stop()
