"""kill -9 at random moments: during offline ingest, during the drain, during registry updates.

Real children (paho, QoS 1, re-sending what had no PUBACK), a real mosquitto cloud, the daemon
killed with SIGKILL and restarted on the same store. Whatever a child got a PUBACK for must reach
the cloud; duplicates are counted; the order of `seq` is kept, and per child: a message PUBACKed
before another was published is stored before it (delivery.py says why that is the rule here).
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from gateway.upstream.cloud_contract import registry_topic
from tests.faults.delivery import check_delivery, connect_children, finish, sender
from tests.support.clients import new_key, publish_retained, registry_doc
from tests.support.offline import cut_off_gateway

CHILDREN = 4


def _kill_at_random(gw, rnd: random.Random, kills: int, low: float, high: float,
                    between=None) -> None:
    for n in range(kills):
        time.sleep(rnd.uniform(low, high))  # the random moment itself, not a synchronisation
        if between is not None:
            between(n)
        gw.kill()
        gw.start()


def _run(cloud, gateways, ingest_kills: int, drain_kills: int, registry_kills: int,
         per_child: int, seed: int) -> None:
    rnd = random.Random(seed)
    keys = {f"k-{n}": new_key() for n in range(CHILDREN)}
    version = 1
    gw, verifier = cut_off_gateway(cloud, gateways, keys)

    children, infos, timelines = connect_children(keys, gw.plain_port)
    stop = threading.Event()
    half = per_child // 2
    # 1. offline ingest: the children stream, the daemon dies under them
    senders = [sender(c, 0, half, infos[c.device_id], stop, timelines[c.device_id])
               for c in children]
    _kill_at_random(gw, rnd, ingest_kills, 0.02, 0.3)
    finish(senders, children, infos)
    backlog = gw.status()["backlog"]["messages"]
    assert backlog >= CHILDREN * half

    # 2. drain: the cloud is back, the backlog flows out, more arrives live, the daemon dies
    cloud.start()
    verifier.connect()
    more = [sender(c, half, per_child, infos[c.device_id], stop, timelines[c.device_id])
            for c in children]
    _kill_at_random(gw, rnd, drain_kills, 0.05, 0.4)
    for t in more:
        t.join(120)

    # 3. registry updates: a new version published, the daemon killed right after
    def new_registry(n: int) -> None:
        nonlocal version
        version += 1
        publish_retained(cloud.port, registry_topic("", "edge-1"), registry_doc(version, keys))
        time.sleep(rnd.uniform(0.0, 0.2))

    _kill_at_random(gw, rnd, registry_kills, 0.0, 0.1, between=new_registry)
    gw.wait_status(lambda s: s["registry_version"] == version, what="the last registry")

    for child in children:
        child.wait_acked([info.mid for info in infos[child.device_id]], timeout=120)
    figures = check_delivery(verifier, {d: per_child for d in keys}, timelines)
    gw.wait_status(lambda s: s["backlog"]["messages"] == 0, what="backlog drained")
    for child in children:
        child.close()
    kills = ingest_kills + drain_kills + registry_kills
    print(f"\nkill -9: {kills} kills survived, 0 PUBACKed lost, {figures}")
    # duplicates are bounded by what can be in flight at a kill: child and uplink windows
    assert figures["redelivered"] + figures["stored_twice"] <= kills * (CHILDREN * 20 + 100)


def test_kill9_during_ingest_drain_and_registry_updates(cloud, gateways):
    """CI: 20 + 20 + 12 = 52 kills."""
    _run(cloud, gateways, 20, 20, 12, per_child=1500, seed=9)


@pytest.mark.slow
def test_kill9_long(cloud, gateways):
    _run(cloud, gateways, 100, 100, 50, per_child=10000, seed=99)
