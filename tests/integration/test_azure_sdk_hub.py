"""Issue 3: the unmodified Azure IoT device SDK uses twins, direct methods and cloud-to-device
messages through the gateway; the method call is made with `gatewayctl invoke`. Over MQTT on
8883 and over MQTT over WebSocket on 443 (issue 15)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.test_azure_sdk import SDK_PYTHON, TRANSPORTS, sdk_listen
from tests.support.clients import new_key
from tests.support.gatewayd import HUB
from tests.support.hub_child import Operator
from tests.support.pki import server_tls
from tests.support.synced import synced_gateway


class SdkChild:
    """The SDK script as a subprocess; its stdout events arrive on a queue."""

    def __init__(self, conn_str: str, ca_file: Path, argv: list[str] = ()) -> None:
        script = Path(__file__).with_name("sdk_hub_child.py")
        self.proc = subprocess.Popen([SDK_PYTHON, str(script), conn_str, str(ca_file), *argv],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
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
                err = self.proc.stderr.read()[-2000:] if self.proc.poll() is not None else ""
                raise AssertionError(f"SDK child: no {kind} event; stderr: {err}") from None
            if event["event"] == kind:
                return event

    def quit(self) -> int:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        return self.proc.wait(60)


@pytest.mark.skipif(not SDK_PYTHON, reason="GATEWAYD_SDK_PYTHON unset: run ./dev.sh test")
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_azure_sdk_twin_methods_and_c2d_through_the_gateway(cloud, gateways, tmp_path, transport):
    address, listen, argv = sdk_listen(transport)
    ca_file, cert_file, key_file = server_tls(tmp_path, (address,), ())
    device_key = new_key()
    operator = Operator(cloud.port)
    operator.put_retained("devices/sdk-hub/twin/desired", {"$version": 1, "interval": 10})
    gw = synced_gateway(cloud, gateways, {"sdk-hub": device_key}, online=True,
                        tls=(cert_file, key_file), listen=listen)
    operator.subscribe("devices/sdk-hub/twin/reported")

    child = SdkChild(f"HostName={HUB};DeviceId=sdk-hub;SharedAccessKey={device_key};"
                     f"GatewayHostName={address}", ca_file, argv)
    twin = child.next("twin")["twin"]
    assert twin["desired"] == {"$version": 1, "interval": 10}
    assert twin["reported"] == {"$version": 2, "sdk": True, "fw": "2.14"}
    child.next("ready")
    head = "mqtt-ws" if transport == "websockets" else "tls"
    status = gw.status()
    assert status["child_listeners"] == {"sdk-hub": head}
    assert status["connections"][head] == 1
    operator.wait(lambda: json.loads(operator.retained.get("devices/sdk-hub/twin/reported",
                                                           b"{}")).get("$version") == 2,
                  what="the SDK's reported patch in the cloud")

    done = subprocess.run([sys.executable, "-m", "gateway.cli.gatewayctl", "invoke", "sdk-hub",
                           "setLed", "--payload", '{"on": true}', "--json", "--cloud", cloud.url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"status": 200,
                                       "payload": {"method": "setLed", "echo": {"on": True}}}

    operator.put_retained("devices/sdk-hub/twin/desired", {"$version": 2, "interval": 30})
    assert child.next("desired")["patch"] == {"$version": 2, "interval": 30}

    sent = subprocess.run([sys.executable, "-m", "gateway.cli.gatewayctl", "send", "sdk-hub",
                           "--payload", "open valve", "--property", "valve=3", "--cloud",
                           cloud.url], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    c2d = child.next("c2d")
    assert c2d["data"] == "open valve" and c2d["props"] == {"valve": "3"}
    assert child.quit() == 0
    operator.close()
