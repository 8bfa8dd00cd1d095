"""Issue 6: a disk that really fills up (a 24 MiB filesystem made for the test). RocksDB's
out-of-space error is sticky, so gatewayd releases its reserve and exits for a restart; the
restarted daemon opens the store, every PUBACKed message is there, and it drains to the cloud.
With refuse-new and a free-space floor the disk never fills at all."""

from __future__ import annotations

import os

import pytest

from gateway.cloud_contract import registry_topic
from tests.support.blockdev import LoopFilesystem
from tests.support.clients import Child, CloudVerifier, new_key, publish_retained, registry_doc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a loop device needs root")


@pytest.fixture
def small_fs(tmp_path):
    fs = LoopFilesystem(tmp_path / "fs", size_mib=24)
    yield fs
    fs.close()


def offline_gateway(cloud, gateways, small_fs, **storage):
    key = new_key()
    publish_retained(cloud.port, registry_topic("", "edge-1"), registry_doc(1, {"d": key}))
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    verifier.disconnect()
    gw = gateways(cloud_url=cloud.url, storage={"path": str(small_fs.mountpoint / "store"),
                                                "reserve_bytes": 3 * 1024 * 1024, **storage})
    gw.start()
    gw.wait_status(lambda s: s["registry_version"] == 1, what="registry")
    cloud.stop()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink cut")
    return gw, key, verifier


def test_a_full_disk_restarts_and_loses_nothing_acknowledged(cloud, gateways, small_fs):
    gw, key, verifier = offline_gateway(cloud, gateways, small_fs, min_free_percent=0)
    child = Child("d", key, gw.plain_port)
    child.client.reconnect_delay_set(60, 120)  # stay away once the daemon is gone
    assert child.connect() == 0
    mids = {child.send(i, size=1000).mid: i for i in range(30000)}
    assert gw.proc.wait(120) == 75, "EX_TEMPFAIL: systemd's Restart=on-failure restarts it"
    gw.proc = None
    acked = sorted(i for mid, i in mids.items() if mid in child.acked)
    assert "the disk is full" in gw.log_text() and "released the reserve" in gw.log_text()
    child.client.loop_stop()

    gw.start()  # what systemd does
    status = gw.status()
    assert status["salvage"] is None, "the store opened as it is, no salvage needed"
    assert status["backlog"]["messages"] >= len(acked)
    cloud.start()
    verifier.connect()
    verifier.wait_for(lambda m: {x.i for x in m} >= set(acked), timeout=120,
                      what="every PUBACKed message")
    print(f"disk full at {len(acked)} PUBACKed messages of 1 KB on 24 MiB; all delivered "
          f"after the restart")


def test_refuse_new_keeps_the_floor_and_the_disk_never_fills(cloud, gateways, small_fs):
    gw, key, verifier = offline_gateway(cloud, gateways, small_fs, min_free_percent=40,
                                        full_policy="refuse-new")
    child = Child("d", key, gw.plain_port)
    assert child.connect() == 0
    for i in range(30000):
        child.send(i, size=1000)
    status = gw.wait_status(lambda s: s["disk"]["full"] and s["disk"]["refused"] > 0,
                            timeout=120, what="refusing at the floor")
    assert gw.proc.poll() is None and "the disk is full" not in gw.log_text()
    assert status["disk"]["free_percent"] > 5, status["disk"]
    held = status["backlog"]["messages"]
    gw.terminate()
    gw.start()
    assert gw.status()["backlog"]["messages"] == held, "the store opens cleanly after"
    print(f"refuse-new on 24 MiB, floor 40%: {held} stored, free {status['disk']['free_percent']}%")
    child.close()

