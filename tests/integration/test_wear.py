"""Done-when 5: with a healthy cloud, 10,000 messages through the gateway write less than 10% of
their payload bytes to the store's device; offline, the bytes written per payload byte are
measured and reported. The store sits alone on a loop device, whose counters are read directly."""

from __future__ import annotations

import os
import threading

import pytest

from tests.support.blockdev import LoopFilesystem
from tests.support.clients import Child, CloudVerifier, new_key
from tests.support.synced import synced_gateway

CHILDREN = 10
PER_CHILD = 1000
PAYLOAD = 200


@pytest.fixture
def loopfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a loop device needs root (CI runs as root)")
    fs = LoopFilesystem(tmp_path / "loop")
    yield fs
    fs.close()


def send_burst(children: list[Child], start: int) -> None:
    """Every child sends PER_CHILD messages of PAYLOAD bytes; returns when all are PUBACKed."""

    def run(child: Child) -> None:
        mids = [child.send(i, size=PAYLOAD).mid for i in range(start, start + PER_CHILD)]
        child.wait_acked(mids, timeout=300)

    threads = [threading.Thread(target=run, args=(c,)) for c in children]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_store_device_writes_per_payload_byte(cloud, gateways, loopfs, record_property):
    keys = {f"w{n}": new_key() for n in range(CHILDREN)}
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    gw = synced_gateway(cloud, gateways, keys, online=True,
                        storage={"path": str(loopfs.mountpoint / "store")})
    children = [Child(d, k, gw.plain_port) for d, k in keys.items()]
    for child in children:
        child.client.max_inflight_messages_set(10)  # 10 x 10 = the uplink's window
        assert child.connect() == 0
    total = CHILDREN * PER_CHILD

    # online: the cloud's PUBACK wins the race against the group commit
    before = loopfs.bytes_written()
    send_burst(children, 0)
    verifier.wait_for(lambda m: len({(x.device, x.i) for x in m}) >= total, timeout=300)
    gw.wait_status(lambda s: s["backlog"]["messages"] == 0, what="drained")
    online = (loopfs.bytes_written() - before) / (total * PAYLOAD)
    print("online outbox:", gw.status()["outbox"])

    # offline: everything is committed, then drained
    verifier.disconnect()  # its session stays on the broker and collects the drain
    cloud.stop()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="offline")
    before = loopfs.bytes_written()
    send_burst(children, PER_CHILD)
    offline_ingest = (loopfs.bytes_written() - before) / (total * PAYLOAD)
    before = loopfs.bytes_written()
    cloud.start()
    verifier.connect()
    verifier.wait_for(lambda m: len({(x.device, x.i) for x in m}) >= 2 * total, timeout=120)
    gw.wait_status(lambda s: s["backlog"]["messages"] == 0, what="drained")
    drain = (loopfs.bytes_written() - before) / (total * PAYLOAD)
    for child in children:
        child.close()

    figures = {"online": online, "offline_ingest": offline_ingest, "offline_drain": drain}
    for name, value in figures.items():
        record_property(name, round(value, 4))
    print("device bytes written per payload byte: "
          + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    assert online < 0.10
