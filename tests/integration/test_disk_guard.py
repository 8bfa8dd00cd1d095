"""Issue 6: the disk guard's two policies against a backlog quota, with the cloud down; service
resumes by itself when there is room again, and nothing the gateway PUBACKed is lost."""

from __future__ import annotations

from tests.support.clients import Child, new_key
from tests.support.offline import cut_off_gateway

QUOTA = 60_000  # bytes of backlog; a message here costs about 300


def start(cloud, gateways, policy: str):
    key = new_key()
    gw, verifier = cut_off_gateway(cloud, gateways, {"d": key},
                                   storage={"max_bytes": QUOTA, "full_policy": policy})
    return gw, key, verifier


def test_drop_oldest_keeps_the_backlog_under_the_quota_and_the_newest_messages(cloud, gateways):
    gw, key, verifier = start(cloud, gateways, "drop-oldest")
    child = Child("d", key, gw.plain_port)
    assert child.connect() == 0
    child.wait_acked([child.send(i, size=200).mid for i in range(1000)])
    status = gw.wait_status(lambda s: s["disk"]["dropped"] > 0 and not s["disk"]["full"]
                            and s["backlog"]["bytes"] <= QUOTA, what="dropped down to the quota")
    dropped, kept = status["disk"]["dropped"], status["backlog"]["messages"]
    assert dropped + kept == 1000
    assert "storage full: backlog of" in gw.log_text() and "storage has room again" in gw.log_text()
    cloud.start()
    verifier.connect()
    verifier.wait_for(lambda m: len({x.i for x in m}) == kept, what="the kept messages")
    got = sorted({x.i for x in verifier.messages})
    assert got == list(range(1000 - kept, 1000)), "the oldest went first, the newest stayed"
    print(f"drop-oldest: quota {QUOTA} B, kept {kept}, dropped {dropped} of 1000")
    child.close()


def test_refuse_new_withholds_the_puback_and_loses_nothing(cloud, gateways):
    gw, key, verifier = start(cloud, gateways, "refuse-new")
    child = Child("d", key, gw.plain_port)
    assert child.connect() == 0
    mids = [child.send(i, size=200).mid for i in range(400)]
    gw.wait_status(lambda s: s["disk"]["full"] and s["disk"]["refused"] > 0, what="refusing")
    assert "storage full" in gw.log_text() and "refuse-new" in gw.log_text()
    held = gw.status()["backlog"]["messages"]
    assert held < 400 and gw.status()["disk"]["dropped"] == 0
    cloud.start()  # the backlog drains, the guard lets the child in again, paho re-sends
    verifier.connect()
    child.wait_acked(mids, timeout=120)
    verifier.wait_for(lambda m: {x.i for x in m} == set(range(400)), timeout=120,
                      what="all 400, none lost")
    print(f"refuse-new: quota {QUOTA} B, {held} stored before refusing, "
          f"{gw.status()['disk']['refused']} refusals, 400 of 400 delivered")
    child.close()


def test_max_publish_rate_paces_the_drain(cloud, gateways):
    key = new_key()
    gw, verifier = cut_off_gateway(cloud, gateways, {"d": key}, cloud={"max_publish_rate": 50})
    child = Child("d", key, gw.plain_port)
    assert child.connect() == 0
    child.wait_acked([child.send(i).mid for i in range(250)])
    arrivals = []
    # set before the connect: what the broker kept for the session arrives with the CONNACK
    verifier.client.on_message = lambda c, u, m: arrivals.append(__import__("time").monotonic())
    cloud.start()
    verifier.connect()
    gw.wait_status(lambda s: s["backlog"]["messages"] == 0, timeout=60, what="drained")
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    print(f"max_publish_rate 50: 250 messages drained in {span:.2f} s")
    assert span >= 3.0, "at most 50 a second after a one-second burst: at least 4 s for 250"
    child.close()
