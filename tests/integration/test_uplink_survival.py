"""Issue 6: the uplink survives what a cloud does to it — a broker that refuses the gateway, a
TLS failure of either kind, a broker that stops answering (half-open), a restart — with one clear
reason each, backoff between attempts, no tight loop, and nothing lost."""

from __future__ import annotations

import signal
import subprocess
import time

from gateway.child import certs
from tests.support.broker import Mosquitto
from tests.support.clients import Child, CloudVerifier, new_key
from tests.support.synced import synced_gateway


def attempts_over(gw, seconds: float) -> int:
    first = gw.status()["uplink"]["attempts"]
    time.sleep(seconds)  # measuring a rate over a window, not waiting for an event
    return gw.status()["uplink"]["attempts"] - first


def test_a_broker_that_refuses_the_gateway(tmp_path, gateways):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "someone", "secret"],
                   check=True, capture_output=True)
    broker = Mosquitto(tmp_path / "strict", password_file=passwd)
    broker.start()
    try:
        gw = gateways(cloud_url=broker.url, cloud={"username": "edge-1", "password": "wrong"})
        gw.start()
        status = gw.wait_status(lambda s: "refused the connection" in s["uplink"]["last_error"],
                                what="the refusal")
        assert "Not authorized" in status["uplink"]["last_error"] or \
            "Bad user name or password" in status["uplink"]["last_error"]
        tries = attempts_over(gw, 4.0)
        assert 1 <= tries <= 12, f"{tries} attempts in 4 s with backoff 0.2..1 s"
        assert gw.log_text().count("refused the connection") == 1, "one line per new reason"
        print(f"refused: {tries} attempts in 4 s")
    finally:
        broker.stop()


def test_tls_failures_say_which(tmp_path, cloud, gateways):
    # plain MQTT where TLS is expected
    gw = gateways("tls-to-plain", cloud_url=f"mqtts://127.0.0.1:{cloud.port}")
    gw.start()
    status = gw.wait_status(lambda s: "TLS" in s["uplink"]["last_error"], what="TLS failure")
    assert "TLS handshake failed" in status["uplink"]["last_error"]

    # a TLS broker whose certificate is not signed by the configured CA
    ca_key, ca_cert = certs.make_ca("the broker's CA")
    key, cert = certs.make_server_cert(ca_key, ca_cert, ["localhost"], ["127.0.0.1"])
    certs.write_pem(tmp_path / "broker.pem", cert=cert)
    certs.write_pem(tmp_path / "broker.key", key=key)
    _, other_ca = certs.make_ca("somebody else's CA")
    certs.write_pem(tmp_path / "other-ca.pem", cert=other_ca)
    broker = Mosquitto(tmp_path / "tls", tls=(tmp_path / "broker.pem", tmp_path / "broker.key"))
    broker.start()
    try:
        gw2 = gateways("bad-ca", cloud_url=f"mqtts://localhost:{broker.port}",
                       cloud={"ca_file": str(tmp_path / "other-ca.pem")})
        gw2.start()
        status = gw2.wait_status(lambda s: "certificate" in s["uplink"]["last_error"],
                                 what="certificate failure")
        assert "TLS certificate check failed" in status["uplink"]["last_error"]
        assert "cloud.ca_file" in status["uplink"]["last_error"]
        tries = attempts_over(gw2, 4.0)
        assert 1 <= tries <= 12, f"{tries} attempts in 4 s"

        certs.write_pem(tmp_path / "ca.pem", cert=ca_cert)
        gw3 = gateways("good-ca", cloud_url=f"mqtts://localhost:{broker.port}",
                       cloud={"ca_file": str(tmp_path / "ca.pem")})
        gw3.start()
        gw3.wait_status(lambda s: s["uplink"]["state"] == "online", what="TLS with the right CA")
    finally:
        broker.stop()


def test_a_half_open_connection_is_detected_and_nothing_is_lost(cloud, gateways):
    key = new_key()
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    gw = synced_gateway(cloud, gateways, {"d": key}, online=True, cloud={"keepalive_secs": 5})
    child = Child("d", key, gw.plain_port)
    assert child.connect() == 0
    cloud.proc.send_signal(signal.SIGSTOP)  # the broker's host hangs: TCP stays up, no answers
    try:
        mids = [child.send(i).mid for i in range(50)]
        status = gw.wait_status(lambda s: s["uplink"]["state"] != "online", timeout=30,
                                what="the dead link noticed")
        child.wait_acked(mids)  # the gateway keeps promising: they are on its disk
    finally:
        cloud.proc.send_signal(signal.SIGCONT)
    assert "half-open" in status["uplink"]["last_error"] or \
        "stopped answering" in gw.status()["uplink"]["last_error"]
    gw.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=60, what="back")
    verifier.wait_for(lambda m: {x.i for x in m} >= set(range(50)), what="all 50")
    child.close()
    verifier.disconnect()


def test_a_lost_connection_is_one_uplink_lost_event_with_the_reason(cloud, gateways):
    gw = gateways(cloud_url=cloud.url)
    gw.start()
    gw.wait_status(lambda s: s["uplink"]["state"] == "online", what="online")
    for flap in (1, 2):
        cloud.stop()  # the cloud broker goes away while the gateway is online
        gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="the loss noticed")
        cloud.start()
        gw.wait_status(lambda s: s["uplink"]["state"] == "online", what="back online")
        lost = [line for line in gw.log_text().splitlines() if "connection to" in line
                and "was lost" in line]
        assert len(lost) == flap, f"one uplink_lost line per lost connection: {lost}"
    assert "the broker closed the connection" in lost[-1] or "connection lost:" in lost[-1], \
        lost[-1]
    assert f"address=127.0.0.1:{cloud.port}" in lost[-1]
