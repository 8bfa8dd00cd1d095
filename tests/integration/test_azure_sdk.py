"""Done-when 4: the unmodified Azure IoT device SDK for Python connects through the gateway
(`GatewayHostName=`, `server_verification_cert`) and its telemetry reaches the cloud broker with
the right user properties."""

from __future__ import annotations

import os
import random
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.clients import CloudVerifier, new_key
from tests.support.gatewayd import HUB
from tests.support.pki import server_tls
from tests.support.synced import synced_gateway

SDK_PYTHON = os.environ.get("GATEWAYD_SDK_PYTHON", "")
SDK_PORT = 8883  # the SDK always connects to 8883 for MQTT over TCP


def free_loopback_address() -> str:
    """A 127.x address where 8883 is free (the SDK's port cannot be changed)."""
    for _ in range(50):
        address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        with socket.socket() as s:
            try:
                s.bind((address, SDK_PORT))
            except OSError:
                continue
            return address
    raise RuntimeError("no loopback address with port 8883 free")


@pytest.mark.skipif(not SDK_PYTHON, reason="GATEWAYD_SDK_PYTHON unset: run ./dev.sh test")
def test_unmodified_azure_sdk_sends_telemetry_through_the_gateway(cloud, gateways, tmp_path):
    address = free_loopback_address()
    ca_file, cert_file, key_file = server_tls(tmp_path, (address,), ())

    device_key = new_key()
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    gw = synced_gateway(cloud, gateways, {"sdk-dev": device_key}, tls=(cert_file, key_file),
                        listen={"host": address, "port": SDK_PORT})

    conn_str = (f"HostName={HUB};DeviceId=sdk-dev;SharedAccessKey={device_key};"
                f"GatewayHostName={address}")
    script = Path(__file__).with_name("sdk_child.py")
    done = subprocess.run([SDK_PYTHON, str(script), conn_str, str(ca_file), "sdk-dev", "3"],
                          capture_output=True, text=True, timeout=120)
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
