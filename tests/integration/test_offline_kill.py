"""Done-when 1: 10 children x 1,000 QoS 1 messages while the cloud is down, SIGKILL midway,
restart, then the cloud returns: every PUBACKed message arrives, each child's order kept, `seq`
strictly increasing, duplicates counted and bounded by the windows."""

from __future__ import annotations

import threading

from tests.support.clients import Child, CloudVerifier, new_key
from tests.support.synced import synced_gateway

CHILDREN = 10
PER_CHILD = 1000
CHILD_WINDOW = 20  # paho's default inflight per child
UPLINK_WINDOW = 100


def test_offline_ingest_survives_sigkill_and_drains_in_order(cloud, gateways):
    keys = {f"sensor-{n}": new_key() for n in range(CHILDREN)}
    verifier = CloudVerifier(cloud.port)
    verifier.connect()
    verifier.disconnect()  # its session (and subscription) stays on the broker

    gw = synced_gateway(cloud, gateways, keys, online=True)
    cloud.stop()
    gw.wait_status(lambda s: s["uplink"]["state"] != "online", what="uplink down")

    children = [Child(d, k, gw.plain_port) for d, k in keys.items()]
    for child in children:
        assert child.connect() == 0
    infos: dict[str, list] = {c.device_id: [] for c in children}

    def send_all(child: Child) -> None:
        for i in range(PER_CHILD):
            infos[child.device_id].append(child.send(i))

    senders = [threading.Thread(target=send_all, args=(c,)) for c in children]
    for t in senders:
        t.start()
    gw.wait_status(lambda s: s["backlog"]["messages"] >= CHILDREN * PER_CHILD // 3,
                   what="a third of the messages stored")
    gw.kill()
    gw.start()  # same store, same ports: the children reconnect and re-send what had no PUBACK
    for t in senders:
        t.join()
    for child in children:
        child.wait_acked([info.mid for info in infos[child.device_id]], timeout=120)
    status = gw.status()
    assert status["backlog"]["messages"] >= CHILDREN * PER_CHILD
    assert status["uplink"]["state"] != "online"

    cloud.start()
    verifier.connect()
    expected = {(d, i) for d in keys for i in range(PER_CHILD)}
    verifier.wait_for(lambda msgs: {(m.device, m.i) for m in msgs} >= expected,
                      timeout=180, what="all 10,000 messages at the cloud")
    gw.wait_status(lambda s: s["backlog"]["messages"] == 0, what="backlog drained")
    for child in children:
        child.close()

    msgs = list(verifier.messages)
    assert verifier.distinct() == expected
    seqs = [m.seq for m in msgs]
    assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False)), "seq must strictly increase"
    assert all(m.gw == "edge-1" for m in msgs)
    for device in keys:
        firsts: list[int] = []
        seen: set[int] = set()
        for m in msgs:
            if m.device == device and m.i not in seen:
                seen.add(m.i)
                firsts.append(m.i)
        assert firsts == sorted(firsts), f"{device}: order broken"
    duplicates = len(msgs) - len(expected)
    print(f"delivered {len(msgs)} for {len(expected)} distinct: {duplicates} duplicates")
    assert duplicates <= CHILDREN * CHILD_WINDOW + UPLINK_WINDOW
