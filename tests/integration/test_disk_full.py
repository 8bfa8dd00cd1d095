"""Issue 6: a disk that really fills up (a 24 MiB filesystem made for the test). RocksDB's
out-of-space error is sticky, so gatewayd releases its reserve and exits for a restart; the
restarted daemon opens the store, every PUBACKed message is there, and it drains to the cloud.
With refuse-new and a free-space floor the disk never fills at all."""

from __future__ import annotations

import base64
import json
import os

import pytest

from tests.support.blockdev import LoopFilesystem
from tests.support.clients import Child, new_key
from tests.support.offline import cut_off_gateway
from tests.support.wait import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a loop device needs root")


@pytest.fixture
def small_fs(tmp_path):
    fs = LoopFilesystem(tmp_path / "fs", size_mib=24)
    yield fs
    fs.close()


def send_random(child: Child, i: int):
    """About 1 KB that compression cannot shrink: the disk must really fill."""
    body = {"device": child.device_id, "i": i, "pad": base64.b64encode(os.urandom(700)).decode()}
    return child.client.publish(f"devices/{child.device_id}/messages/events/",
                                json.dumps(body), qos=1)


def offline_gateway(cloud, gateways, small_fs, **storage):
    key = new_key()
    gw, verifier = cut_off_gateway(
        cloud, gateways, {"d": key},
        storage={"path": str(small_fs.mountpoint / "store"), "reserve_bytes": 3 * 1024 * 1024,
                 **storage})
    return gw, key, verifier


def test_a_full_disk_restarts_and_loses_nothing_acknowledged(cloud, gateways, small_fs):
    gw, key, verifier = offline_gateway(cloud, gateways, small_fs, min_free_percent=0)
    child = Child("d", key, gw.plain_port)
    child.client.reconnect_delay_set(60, 120)  # stay away once the daemon is gone
    assert child.connect() == 0
    mids = {send_random(child, i).mid: i for i in range(30000)}
    # how long 24 MiB take to fill is the machine's speed, not the daemon's behaviour: the
    # deadline is generous and a timeout shows the journal
    code = wait_until(gw.proc.poll, lambda c: c is not None, timeout=600, interval=0.2,
                      what="the daemon to exit on the full disk",
                      show=lambda _: f"{len(child.acked)} PUBACKed; {gw.log_text()[-1500:]}")
    assert code == 75, "EX_TEMPFAIL: systemd's Restart=on-failure restarts it"
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
    verifier.wait_for(lambda m: {x.i for x in m} >= set(acked), timeout=600,
                      what=f"every PUBACKed message ({len(acked)})")
    print(f"disk full at {len(acked)} PUBACKed messages of 1 KB on 24 MiB; all delivered "
          f"after the restart")


def test_refuse_new_keeps_the_floor_and_the_disk_never_fills(cloud, gateways, small_fs):
    gw, key, verifier = offline_gateway(cloud, gateways, small_fs, min_free_percent=40,
                                        full_policy="refuse-new")
    child = Child("d", key, gw.plain_port)
    assert child.connect() == 0
    for i in range(30000):
        send_random(child, i)
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



def test_drop_oldest_on_a_small_filesystem_keeps_running(cloud, gateways, small_fs):
    gw, key, verifier = offline_gateway(cloud, gateways, small_fs, min_free_percent=40)
    child = Child("d", key, gw.plain_port)
    assert child.connect() == 0
    mids = [send_random(child, i).mid for i in range(30000)]
    child.wait_acked(mids, timeout=600)  # 30,000 at the speed of a loaded machine
    status = gw.wait_status(lambda s: s["disk"]["dropped"] > 0, timeout=60, what="dropping")
    assert gw.proc.poll() is None, "still running: the floor held before the disk filled"
    kept = status["backlog"]["messages"]
    gw.terminate()
    gw.start()
    assert gw.status()["salvage"] is None
    cloud.start()
    verifier.connect()
    verifier.wait_for(lambda m: any(x.i == 29999 for x in m), timeout=600, what="the newest")
    gw.wait_status(lambda s: s["backlog"]["messages"] == 0, timeout=600, what="drained")
    got = sorted({x.i for x in verifier.messages})
    assert got and got[-1] == 29999 and got == list(range(got[0], 30000)), \
        "the newest survive, contiguous: only the oldest were dropped"
    print(f"drop-oldest on 24 MiB, floor 40%: {len(got)} delivered, "
          f"{30000 - len(got)} oldest dropped, {kept} kept at the stop")
    child.close()
