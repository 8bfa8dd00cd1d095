"""Link flaps: the uplink runs through a TCP proxy the test controls, which resets the link 100
times during a drain (backlog plus live traffic). Zero PUBACKed messages lost, order kept."""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.faults.delivery import check_delivery, finish, sender
from tests.support.clients import Child, CloudVerifier, new_key
from tests.support.synced import synced_gateway
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import wait_until

CHILDREN = 4


def _flaps(cloud, gateways, cuts: int, per_child: int, seed: int) -> None:
    rnd = random.Random(seed)
    keys = {f"f-{n}": new_key() for n in range(CHILDREN)}
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    proxy = TcpProxy(cloud.port)
    gw = synced_gateway(cloud, gateways, keys, cloud_url=proxy.url,
                        cloud={"reconnect_min_secs": 0.02, "reconnect_max_secs": 0.1})
    proxy.down()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink down")

    children = [Child(d, k, gw.plain_port) for d, k in keys.items()]
    for child in children:
        assert child.connect() == 0
    infos: dict[str, list] = {c.device_id: [] for c in children}
    stop = threading.Event()
    half = per_child // 2
    for t in [sender(c, 0, half, infos[c.device_id], stop) for c in children]:
        t.join(60)
    for child in children:
        child.wait_acked([info.mid for info in infos[child.device_id]])

    proxy.up()
    live = [sender(c, half, per_child, infos[c.device_id], stop) for c in children]
    cut_with_traffic = 0
    started = time.monotonic()
    for _ in range(cuts):
        wait_until(proxy.connections, lambda n: n > 0, timeout=30, interval=0.005,
                   what="the uplink to reconnect through the proxy")
        time.sleep(rnd.uniform(0.0, 0.08))  # the random moment of the cut
        cut_with_traffic += proxy.cut() > 0
    cutting_secs = time.monotonic() - started
    finish(live, children, infos, timeout=60)
    figures = check_delivery(verifier, {d: per_child for d in keys})
    gw.wait_status(lambda s: s["backlog"]["messages"] == 0, what="backlog drained")
    status = gw.status()
    for child in children:
        child.close()
    proxy.close()
    print(f"\nflaps: {cuts} cuts survived, 0 PUBACKed lost, {figures}, "
          f"uplink connects {status['uplink']['connects']}, {cutting_secs:.1f} s of cuts")
    assert cut_with_traffic == cuts
    assert proxy.accepted >= cuts + 1


def test_100_link_cuts_during_drain(cloud, gateways):
    _flaps(cloud, gateways, 100, per_child=1500, seed=4)


@pytest.mark.slow
def test_1000_link_cuts_during_drain(cloud, gateways):
    _flaps(cloud, gateways, 1000, per_child=10000, seed=44)
