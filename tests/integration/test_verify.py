"""Issue 17: `gatewayctl verify` without --follow ends by itself once what it judged has ended,
with exit status 0 when nothing is unaccounted; a gateway that never settles is a timeout (75)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.clients import Child, new_key
from tests.support.synced import synced_gateway


def _verify(cloud, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.gatewayctl", "verify", *args, "--json", "--cloud",
         cloud.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # once it is subscribed
    assert "listening for" in first, first + proc.stderr.read()
    return proc


def test_one_shot_verify_judges_from_since_and_ends_when_settled(cloud, gateways):
    key = new_key()
    gw = synced_gateway(cloud, gateways, {"s1": key}, online=True,
                        cloud={"ledger_interval_secs": 0.5})
    since = gw.status()["next_seq"]
    proc = _verify(cloud, "edge-1", "--since", str(since), "--timeout", "60")
    child = Child("s1", key, gw.plain_port)
    assert child.connect() == 0
    child.wait_acked([child.send(i).mid for i in range(20)])
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    final = json.loads(out.splitlines()[-1])
    assert final["final"] and final["start"] == since and final["unaccounted"] == 0
    assert final["issued"] == final["delivered"] + final["pending"]
    child.close()


def test_one_shot_verify_of_a_silent_gateway_times_out_with_75(cloud):
    proc = _verify(cloud, "nobody", "--timeout", "1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "not everything was settled within 1 s" in err
    assert json.loads(out.splitlines()[-1])["start"] is None
