"""Done-when 4: the unmodified Azure IoT device SDK for Python connects through the gateway
(`GatewayHostName=`, `server_verification_cert`) and its telemetry reaches the cloud broker with
the right user properties: over MQTT on 8883, and over MQTT over WebSocket on 443 (issue 15)."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.clients import CloudVerifier, new_key
from tests.support.gatewayd import HUB
from tests.support.pki import server_tls
from tests.support.synced import synced_gateway
from tests.support.wait import wait_until

SDK_PYTHON = os.environ.get("GATEWAYD_SDK_PYTHON", "")
SDK_PORT = 8883  # the SDK always connects to 8883 for MQTT over TCP
SDK_WS_PORT = 443  # and to 443 for MQTT over WebSocket
TRANSPORTS = ("mqtt", "websockets")


def free_loopback_address(port: int = SDK_PORT) -> str:
    """A 127.x address where `port` is free (the SDK's ports cannot be changed)."""
    for _ in range(50):
        address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        with socket.socket() as s:
            try:
                s.bind((address, port))
            except PermissionError:
                pytest.skip(f"port {port} needs root or CAP_NET_BIND_SERVICE here")
            except OSError:
                continue
            return address
    raise RuntimeError(f"no loopback address with port {port} free")


def sdk_listen(transport: str) -> tuple[str, dict, list[str]]:
    """(address, [listen] overrides, the SDK scripts' extra argv) for one transport: the
    gateway's TLS head on the port the SDK dials for it."""
    if transport == "websockets":
        address = free_loopback_address(SDK_WS_PORT)
        return address, {"host": address, "port": 0, "https_port": SDK_WS_PORT}, ["websockets"]
    address = free_loopback_address()
    return address, {"host": address, "port": SDK_PORT}, []


@pytest.mark.skipif(not SDK_PYTHON, reason="GATEWAYD_SDK_PYTHON unset: run ./dev.sh test")
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unmodified_azure_sdk_sends_telemetry_through_the_gateway(cloud, gateways, tmp_path,
                                                                  transport):
    address, listen, argv = sdk_listen(transport)
    ca_file, cert_file, key_file = server_tls(tmp_path, (address,), ())

    device_key = new_key()
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    gw = synced_gateway(cloud, gateways, {"sdk-dev": device_key}, tls=(cert_file, key_file),
                        listen=listen)

    conn_str = (f"HostName={HUB};DeviceId=sdk-dev;SharedAccessKey={device_key};"
                f"GatewayHostName={address}")
    script = Path(__file__).with_name("sdk_child.py")
    done = subprocess.run([SDK_PYTHON, str(script), conn_str, str(ca_file), "sdk-dev", "3",
                           *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:] + gw.log_text()[-3000:]

    verifier.wait_for(lambda msgs: len(msgs) >= 3, what="the SDK's messages")
    got = sorted(verifier.messages, key=lambda m: m.i)
    assert [m.i for m in got] == [0, 1, 2]
    for m in got:
        assert m.device == "sdk-dev"
        assert m.gw == "edge-1"
        assert m.props["temperature"] == "21.5"
        assert m.props["site name"] == "north/gate"
        assert m.props["$.ct"] == "application/json"
        assert m.props["$.ce"] == "utf-8"
    seqs = [m.seq for m in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    head = "mqtt-ws" if transport == "websockets" else "tls"
    assert re.search(rf"child sdk-dev: connected from \S+ \({head}\)", gw.log_text())
    assert head in gw.status()["connections"]


OFFLINE = 60  # messages the SDK sends with the link cut, across the kill


def _numbers(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not SDK_PYTHON, reason="GATEWAYD_SDK_PYTHON unset: run ./dev.sh test")
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_azure_sdk_acked_messages_survive_a_link_cut_and_a_kill(cloud, gateways, tmp_path,
                                                                transport):
    """Issue 15 done-when 1, last clause, for the Python SDK: with the cloud broker stopped the
    SDK sends; gatewayd is SIGKILLed partway and restarted under it (the SDK's own connection
    retry reconnects); every message whose send_message had returned reaches the cloud once the
    broker is back, in order."""
    address, listen, argv = sdk_listen(transport)
    ca_file, cert_file, key_file = server_tls(tmp_path, (address,), ())
    device_key = new_key()
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    verifier.disconnect()  # its session (and subscription) stays on the broker
    gw = synced_gateway(cloud, gateways, {"sdk-dev": device_key}, tls=(cert_file, key_file),
                        listen=listen, online=True)
    cloud.stop()  # the link is cut
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink cut")

    acked = tmp_path / "acked"
    conn_str = (f"HostName={HUB};DeviceId=sdk-dev;SharedAccessKey={device_key};"
                f"GatewayHostName={address}")
    script = Path(__file__).with_name("sdk_child.py")
    child = subprocess.Popen([SDK_PYTHON, str(script), conn_str, str(ca_file), "sdk-dev",
                              str(OFFLINE), *argv, f"--acked={acked}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def journal(_last: object) -> str:
            return gw.log_text()[-3000:]

        wait_until(lambda: _numbers(acked), lambda n: len(n) >= OFFLINE // 3, timeout=90,
                   what="a third acknowledged offline", show=journal)
        gw.kill()  # SIGKILL in the middle of the sends
        gw.start()  # same store, same address and port: the SDK's retry reconnects
        assert child.wait(180) == 0, child.stderr.read()[-3000:]
    finally:
        if child.poll() is None:
            child.kill()
    got_acked = _numbers(acked)
    assert got_acked == list(range(OFFLINE))
    assert gw.status()["uplink"]["state"] != "online"

    cloud.start()  # the link returns
    verifier.connect()
    verifier.wait_for(lambda msgs: {m.i for m in msgs} >= set(got_acked), timeout=120,
                      what="every acknowledged message in the cloud")
    assert all((m.device, m.gw) == ("sdk-dev", "edge-1") for m in verifier.messages)
    firsts = list(dict.fromkeys(m.i for m in verifier.messages))
    assert firsts == sorted(firsts), "in order"
    seqs = [m.seq for m in verifier.messages]
    assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False)), "seq strictly increases"
