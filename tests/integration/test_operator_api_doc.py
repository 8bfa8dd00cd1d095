"""Issue 19: the worked script of docs/operator-api.md, run as it is printed there, against a real
mosquitto and a real gatewayd, so that the documentation of the operator's API cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "operator-api.md"


def the_script() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/operator-api.md has one worked script"
    return blocks[0]


def test_the_worked_script_runs_against_a_real_broker_and_gateway(cloud, gateways, tmp_path):
    gw = gateways("edge-1", cloud_url=cloud.url, gateway_id="edge-1")
    gw.start()
    gw.wait_status(lambda s: s["uplink"]["state"] == "online", what="online")
    script = tmp_path / "onboard.py"
    script.write_text(the_script())
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, GATEWAYD_CLOUD=cloud.url))
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    added = [line.split(" ", 2) for line in out if line.startswith("added ")]
    assert [a[1] for a in added] == ["sensor-1", "sensor-2"]
    assert all(a[2].startswith(f"HostName=hub.example.net;DeviceId={a[1]};SharedAccessKey=")
               and a[2].endswith(";GatewayHostName=192.168.1.10") for a in added)
    assert ("refused: sensor-1 already has a parent, edge-1; remove it there first "
            "(gatewayctl children remove edge-1 sensor-1)") in out
    assert "desired {'interval': 30, 'unit': 'C', '$version': 1}" in out
    assert any(line.startswith("reboot 404 ") for line in out), out  # sensor-1 is not connected
    # the backlog is 0, or None if the gateway's first reported twin has not reached the broker
    assert any(line.startswith("fleet edge-1 online ") for line in out), out
    assert "children [('sensor-1', 'enabled'), ('sensor-2', 'disabled')]" in out
    status = gw.wait_status(lambda s: s["registry_version"] == 2
                            and s["time_to_live_secs"] == 86400, what="the script's changes")
    assert status["registry_children"] == 2
