"""Issue 17: `gatewayctl fleet status` over fifty real gatewayd processes and one mosquitto.

Each gateway is small (no reserve file, no listeners but one plain port, a 5 s keepalive so that
its last will comes soon after a SIGKILL). They start in parallel: start-up is mostly Python's
imports, and the box has two cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from gateway.operator import CloudSession, CloudTarget, fleet_status
from tests.support.wait import wait_until

FLEET = 50


def fleet(cloud, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.gatewayctl", "fleet", "status", "--cloud", cloud.url,
         *extra], capture_output=True, text=True, timeout=60)


def fleet_json(cloud) -> list[dict]:
    done = fleet(cloud, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def fleet_rows(cloud) -> list[dict]:
    """The same rows through the Python API, for polling: a gatewayctl process per poll would
    cost the two cores a second of imports each."""
    session = CloudSession(CloudTarget("127.0.0.1", cloud.port))
    try:
        return [row.to_json() for row in fleet_status(session)]
    finally:
        session.close()


def test_fifty_gateways_one_line_each_and_a_killed_one_is_offline_by_its_last_will(
        cloud, gateways):
    gws = [gateways(f"gw{i:02d}", cloud_url=cloud.url, gateway_id=f"site-{i:02d}",
                    storage={"reserve_bytes": 0}, cloud={"keepalive_secs": 5})
           for i in range(FLEET)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda gw: gw.start(timeout=90), gws))
    ids = {gw.gateway_id for gw in gws}

    def everyone_reported(rows: list[dict]) -> bool:
        return {r["gateway"] for r in rows if r["online"] and r["version"]} == ids

    wait_until(lambda: fleet_rows(cloud), everyone_reported, timeout=90, interval=0.5,
               what="every gateway online with its reported twin",
               show=lambda rows: sorted(r["gateway"] for r in rows if r["online"]))
    rows = fleet_json(cloud)  # the command itself answers, and lists every one
    assert len(rows) == FLEET and everyone_reported(rows)
    assert all(r["backlog_messages"] == 0 and r["dead_letters"] == 0 for r in rows)
    assert all(r["disk_free_bytes"] > 0 and r["last_seen"] for r in rows)

    crashed, stopped = gws[17], gws[33]
    crashed.kill()
    assert stopped.terminate() == 0

    def both_down(rows: list[dict]) -> bool:
        return {r["gateway"] for r in rows if not r["online"]} == {crashed.gateway_id,
                                                                   stopped.gateway_id}

    wait_until(lambda: fleet_rows(cloud), both_down, timeout=60, interval=0.5,
               what="the killed gateway's last will and the stopped one's offline",
               show=lambda rows: [r for r in rows if not r["online"]])
    rows = fleet_json(cloud)
    assert both_down(rows)
    by_id = {r["gateway"]: r for r in rows}
    assert by_id[crashed.gateway_id]["since"] is None, "a last will cannot say when"
    assert by_id[crashed.gateway_id]["last_seen"] is not None
    assert by_id[stopped.gateway_id]["since"] is not None, "a clean stop says when"
    assert {r["gateway"] for r in rows[:2]} == {crashed.gateway_id, stopped.gateway_id}, \
        "worst first: the offline gateways lead"

    table = fleet(cloud)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["GATEWAY", "UPLINK"]
    assert len(lines) == FLEET + 2 and lines[-1] == f"{FLEET} gateways, 2 offline"
    assert {lines[1].split()[0], lines[2].split()[0]} == {crashed.gateway_id, stopped.gateway_id}
    assert "offline (last will)" in table.stdout and "offline since" in table.stdout
